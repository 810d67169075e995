"""Triton kernel writing new keys/values into the paged KV cache (slot -1 = skip, for padded rows)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _store_kvcache_kernel(
    key_ptr,
    value_ptr,
    k_cache_ptr,
    v_cache_ptr,
    slot_ptr,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_cb,
    stride_co,
    stride_ch,
    num_kv_heads,
    head_dim,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """One program per token: copy its [Hkv, D] key and value rows to the token's cache slot."""
    token = tl.program_id(0)
    # int64: slot * row stride overflows int32 on caches of a few GiB.
    slot = tl.load(slot_ptr + token).to(tl.int64)
    if slot < 0:
        return
    block = slot // BLOCK_SIZE
    offset = slot % BLOCK_SIZE
    heads = tl.arange(0, BLOCK_H)[:, None]
    dims = tl.arange(0, BLOCK_D)[None, :]
    mask = (heads < num_kv_heads) & (dims < head_dim)
    src_k = key_ptr + token.to(tl.int64) * stride_kt + heads * stride_kh + dims
    src_v = value_ptr + token.to(tl.int64) * stride_vt + heads * stride_vh + dims
    dst = block * stride_cb + offset * stride_co + heads * stride_ch + dims
    k = tl.load(src_k, mask=mask)
    v = tl.load(src_v, mask=mask)
    tl.store(k_cache_ptr + dst, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(v_cache_ptr + dst, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def store_kvcache(
    key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Write key/value [N, Hkv, D] into the paged caches at slot_mapping [N] (slot -1 = skip)."""
    num_tokens, num_kv_heads, head_dim = key.shape
    if num_tokens == 0:
        return
    # Keys may be strided views of a fused qkv tensor; only the head_dim axis must be contiguous.
    assert key.stride(-1) == 1 and value.stride(-1) == 1, "key/value head_dim must be contiguous"
    assert k_cache.stride() == v_cache.stride() and k_cache.stride(-1) == 1, "caches must share a contiguous layout"
    assert k_cache.shape[2:] == (num_kv_heads, head_dim) and slot_mapping.numel() == num_tokens
    _store_kvcache_kernel[(num_tokens,)](
        key,
        value,
        k_cache,
        v_cache,
        slot_mapping,
        key.stride(0),
        key.stride(1),
        value.stride(0),
        value.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        num_kv_heads,
        head_dim,
        BLOCK_SIZE=k_cache.shape[1],
        BLOCK_H=triton.next_power_of_2(num_kv_heads),
        BLOCK_D=triton.next_power_of_2(head_dim),
    )
