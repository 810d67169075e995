"""Plain-torch paged-attention reference: the CPU backend and the oracle every other kernel is tested against.

Cache layout (per layer): k_cache, v_cache of shape [num_blocks, block_size, num_kv_heads, head_dim].
A token's slot is block_id * block_size + offset; slot -1 means "skip" (padded rows).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def store_kvcache(
    key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Write key/value [N, Hkv, D] into the paged caches at slot_mapping [N] (slot -1 = skip)."""
    flat_k = k_cache.view(-1, *k_cache.shape[2:])
    flat_v = v_cache.view(-1, *v_cache.shape[2:])
    valid = slot_mapping >= 0
    if not bool(valid.all()):
        key, value, slot_mapping = key[valid], value[valid], slot_mapping[valid]
    flat_k.index_copy_(0, slot_mapping, key.to(flat_k.dtype))
    flat_v.index_copy_(0, slot_mapping, value.to(flat_v.dtype))


def _gather(cache: torch.Tensor, blocks: torch.Tensor, length: int) -> torch.Tensor:
    """Contiguous [length, Hkv, D] view of one sequence's keys or values."""
    return cache[blocks].reshape(-1, *cache.shape[2:])[:length]


def paged_prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    context_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Causal attention for variable-length queries [Nq, Hq, D] over paged keys.

    Sequence b owns queries cu_seqlens_q[b]:cu_seqlens_q[b+1], the last q_len tokens of its
    context_lens[b] tokens (earlier ones come from the prefix cache or earlier chunks).
    """
    out = torch.empty_like(q)
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    group = q.shape[1] // num_kv_heads
    block_size = k_cache.shape[1]
    cu = cu_seqlens_q.tolist()
    ctx = context_lens.tolist()
    for b, total in enumerate(ctx):
        start, end = cu[b], cu[b + 1]
        q_len = end - start
        if q_len == 0:
            continue
        blocks = block_tables[b, : (total + block_size - 1) // block_size]
        k = _gather(k_cache, blocks, total).transpose(0, 1)  # [Hkv, L, D]
        v = _gather(v_cache, blocks, total).transpose(0, 1)
        # Fold the GQA group into the query axis: [Hkv, group*q_len, D], no key repetition needed.
        qb = q[start:end].view(q_len, num_kv_heads, group, head_dim).permute(1, 2, 0, 3)
        qb = qb.reshape(num_kv_heads, group * q_len, head_dim)
        q_pos = torch.arange(total - q_len, total, device=q.device)
        mask = q_pos[:, None] >= torch.arange(total, device=q.device)[None, :]
        mask = mask.repeat(group, 1)
        o = F.scaled_dot_product_attention(qb.to(k.dtype), k, v, attn_mask=mask, scale=scale)
        o = o.view(num_kv_heads, group, q_len, head_dim).permute(2, 0, 1, 3)
        out[start:end] = o.reshape(q_len, -1, head_dim).to(out.dtype)
    return out


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    context_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """One query per sequence, q [B, Hq, D], attending to all context_lens[b] cached tokens."""
    batch, num_heads, head_dim = q.shape
    num_kv_heads, block_size = k_cache.shape[2], k_cache.shape[1]
    group = num_heads // num_kv_heads
    max_len = int(context_lens.max())
    num_blocks = (max_len + block_size - 1) // block_size
    tables = block_tables[:, :num_blocks].clamp(min=0)
    # Padded gather of every sequence's keys: [B, Hkv, L, D], masked past each context length.
    k = k_cache[tables].reshape(batch, -1, num_kv_heads, head_dim)[:, :max_len].transpose(1, 2)
    v = v_cache[tables].reshape(batch, -1, num_kv_heads, head_dim)[:, :max_len].transpose(1, 2)
    mask = None
    if batch > 1:  # one sequence has nothing to mask (its keys end at max_len); SDPA is faster unmasked
        mask = (torch.arange(max_len, device=q.device)[None, :] < context_lens[:, None])[:, None, None, :]
    qb = q.view(batch, num_kv_heads, group, head_dim).to(k.dtype)
    o = F.scaled_dot_product_attention(qb, k, v, attn_mask=mask, scale=scale)
    return o.reshape(batch, num_heads, head_dim).to(q.dtype)
