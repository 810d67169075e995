"""Triton kernel for an attention layer's input side: split qkv, per-head q/k RMSNorm, rotary, K/V cache store.

One launch replaces the unfused chain (q_norm, k_norm, rotary, store_kvcache) and rounds exactly where the
eager ops do: RMSNorm in fp32, cast to the input dtype, times the weight (rounded); rotary with cos/sin cast
to the dtype and each product and the sum rounded. nanovllm_tui/kernels/qkv_ref.py is the same op in plain torch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _round(x, dtype: tl.constexpr):
    """fp32 -> dtype -> fp32: where the eager op would hold a dtype tensor.

    bf16 rounds to nearest even by hand: the Triton interpreter's fp32 -> bf16 cast truncates, and the
    CPU tests must see the GPU's (and torch's) rounding. The result is exact in bf16, so any later cast is too.
    """
    if dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True)
    return x.to(dtype).to(tl.float32)


@triton.jit
def _rms_norm(x1, x2, w_ptr, eps, HALF: tl.constexpr, dtype: tl.constexpr):
    """RMSNorm of rows [R, 2*HALF] held as halves: fp32 statistics, cast, then weight * x in the dtype."""
    dims = tl.arange(0, HALF)[None, :]
    var = (tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1)) / (2 * HALF)
    rstd = tl.rsqrt(var + eps)[:, None]
    w1 = tl.load(w_ptr + dims).to(tl.float32)
    w2 = tl.load(w_ptr + HALF + dims).to(tl.float32)
    return _round(w1 * _round(x1 * rstd, dtype), dtype), _round(w2 * _round(x2 * rstd, dtype), dtype)


@triton.jit
def _rotary(x1, x2, cos1, cos2, sin1, sin2, dtype: tl.constexpr):
    """x * cos + rotate_half(x) * sin, with rotate_half(x) = cat(-x2, x1); every op rounded to the dtype."""
    o1 = _round(_round(x1 * cos1, dtype) + _round(-x2 * sin1, dtype), dtype)
    o2 = _round(_round(x2 * cos2, dtype) + _round(x1 * sin2, dtype), dtype)
    return o1, o2


@triton.jit
def _norm_rope_q(
    row,
    q_out,
    qw_ptr,
    eps,
    kv_head,
    cos1,
    cos2,
    sin1,
    sin2,
    GROUP: tl.constexpr,
    BLOCK_G: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    Q_NORM: tl.constexpr,
    dtype: tl.constexpr,
):
    """A group's query heads from the qkv row: norm (Q_NORM), rotate, write to this token's q output."""
    HALF: tl.constexpr = HEAD_DIM // 2
    dims = tl.arange(0, HALF)[None, :]
    heads = kv_head * GROUP + tl.arange(0, BLOCK_G)[:, None]
    mask = (heads < (kv_head + 1) * GROUP) & (dims < HALF)
    x1 = tl.load(row + heads * HEAD_DIM + dims, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(row + heads * HEAD_DIM + HALF + dims, mask=mask, other=0.0).to(tl.float32)
    if Q_NORM:
        x1, x2 = _rms_norm(x1, x2, qw_ptr, eps, HALF, dtype)
    x1, x2 = _rotary(x1, x2, cos1, cos2, sin1, sin2, dtype)
    out = q_out + heads * HEAD_DIM
    tl.store(out + dims, x1.to(dtype), mask=mask)
    tl.store(out + HALF + dims, x2.to(dtype), mask=mask)


@triton.jit
def _norm_rope_store_kv(
    k_src,
    v_src,
    k_dst,
    v_dst,
    kw_ptr,
    eps,
    cos1,
    cos2,
    sin1,
    sin2,
    HEAD_DIM: tl.constexpr,
    K_NORM: tl.constexpr,
    dtype: tl.constexpr,
):
    """A key head normed (K_NORM) and rotated, and its value head, stored into their cache slots."""
    HALF: tl.constexpr = HEAD_DIM // 2
    dims = tl.arange(0, HALF)[None, :]
    k1 = tl.load(k_src + dims).to(tl.float32)
    k2 = tl.load(k_src + HALF + dims).to(tl.float32)
    if K_NORM:
        k1, k2 = _rms_norm(k1, k2, kw_ptr, eps, HALF, dtype)
    k1, k2 = _rotary(k1, k2, cos1, cos2, sin1, sin2, dtype)
    v_dims = tl.arange(0, HEAD_DIM)
    v = tl.load(v_src + v_dims)
    cache_ty = k_dst.dtype.element_ty
    tl.store(k_dst + dims, k1.to(dtype).to(cache_ty))
    tl.store(k_dst + HALF + dims, k2.to(dtype).to(cache_ty))
    tl.store(v_dst + v_dims, v.to(cache_ty))


@triton.jit
def _qk_norm_rope_store_kernel(
    qkv_ptr,
    pos_ptr,
    cos_ptr,
    sin_ptr,
    qw_ptr,
    kw_ptr,
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    slot_ptr,
    stride_t,
    stride_pos,
    stride_slot,
    stride_cos,
    stride_sin,
    stride_cb,
    stride_co,
    stride_ch,
    eps,
    NUM_HEADS: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    GROUP: tl.constexpr,
    BLOCK_G: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    Q_NORM: tl.constexpr,
    K_NORM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):
    """One program per (token, kv head): its GROUP query heads, its key head and its value head."""
    token = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1)
    HALF: tl.constexpr = HEAD_DIM // 2
    dtype = qkv_ptr.dtype.element_ty
    dims = tl.arange(0, HALF)[None, :]
    row = qkv_ptr + token * stride_t

    # 1. cos/sin at this token's position, cast to the dtype as the eager rotary does.
    pos = tl.load(pos_ptr + token * stride_pos).to(tl.int64)
    cos1 = _round(tl.load(cos_ptr + pos * stride_cos + dims), dtype)
    cos2 = _round(tl.load(cos_ptr + pos * stride_cos + HALF + dims), dtype)
    sin1 = _round(tl.load(sin_ptr + pos * stride_sin + dims), dtype)
    sin2 = _round(tl.load(sin_ptr + pos * stride_sin + HALF + dims), dtype)

    # 2. Query heads of this group: norm, rotate, write to the contiguous q output.
    q_out = q_ptr + token * (NUM_HEADS * HEAD_DIM)
    _norm_rope_q(row, q_out, qw_ptr, eps, kv_head, cos1, cos2, sin1, sin2, GROUP, BLOCK_G, HEAD_DIM, Q_NORM, dtype)

    # 3. Key and value head: skipped for padded rows (slot -1); int64 slots, as in triton_store_kv.
    slot = tl.load(slot_ptr + token * stride_slot).to(tl.int64)
    if slot >= 0:
        k_src = row + (NUM_HEADS + kv_head) * HEAD_DIM
        v_src = row + (NUM_HEADS + NUM_KV_HEADS + kv_head) * HEAD_DIM
        dst = (slot // BLOCK_SIZE) * stride_cb + (slot % BLOCK_SIZE) * stride_co + kv_head * stride_ch
        k_dst, v_dst = k_cache_ptr + dst, v_cache_ptr + dst
        _norm_rope_store_kv(k_src, v_src, k_dst, v_dst, kw_ptr, eps, cos1, cos2, sin1, sin2, HEAD_DIM, K_NORM, dtype)


def qk_norm_rope_store(
    qkv: torch.Tensor,
    positions: torch.Tensor,
    cos_cached: torch.Tensor,
    sin_cached: torch.Tensor,
    q_weight: torch.Tensor | None,
    k_weight: torch.Tensor | None,
    eps: float,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> torch.Tensor:
    """qkv [N, (Hq+2*Hkv)*D] -> rotated (and normed) q [N, Hq, D]; keys and values go to the paged caches.

    Head counts come from the caches [num_blocks, block_size, Hkv, D]; slot -1 skips a row's store. Checks
    read shapes only (no device reads), so the call is CUDA-graph safe.
    """
    num_heads, num_kv_heads, head_dim = _check_args(
        qkv, positions, cos_cached, sin_cached, q_weight, k_weight, k_cache, v_cache, slot_mapping
    )
    num_tokens = qkv.shape[0]
    q = torch.empty(num_tokens, num_heads, head_dim, dtype=qkv.dtype, device=qkv.device)
    if num_tokens == 0:
        return q
    group = num_heads // num_kv_heads
    _qk_norm_rope_store_kernel[(num_tokens, num_kv_heads)](
        qkv,
        positions,
        cos_cached,
        sin_cached,
        q_weight if q_weight is not None else qkv,
        k_weight if k_weight is not None else qkv,
        q,
        k_cache,
        v_cache,
        slot_mapping,
        qkv.stride(0),
        positions.stride(0),
        slot_mapping.stride(0),
        cos_cached.stride(0),
        sin_cached.stride(0),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        eps,
        NUM_HEADS=num_heads,
        NUM_KV_HEADS=num_kv_heads,
        GROUP=group,
        BLOCK_G=triton.next_power_of_2(group),
        HEAD_DIM=head_dim,
        Q_NORM=q_weight is not None,
        K_NORM=k_weight is not None,
        BLOCK_SIZE=k_cache.shape[1],
        enable_fp_fusion=False,  # an fma would skip a rounding that eager's separate mul and add make
    )
    return q


def _check_args(
    qkv: torch.Tensor,
    positions: torch.Tensor,
    cos_cached: torch.Tensor,
    sin_cached: torch.Tensor,
    q_weight: torch.Tensor | None,
    k_weight: torch.Tensor | None,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> tuple[int, int, int]:
    """(query heads, kv heads, head dim) of qk_norm_rope_store's arguments; ValueError naming a bad one."""
    if qkv.dim() != 2 or k_cache.dim() != 4:
        raise ValueError(f"qkv must be 2-D and the caches 4-D, got {tuple(qkv.shape)} and {tuple(k_cache.shape)}")
    num_tokens = qkv.shape[0]
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    if head_dim < 2 or head_dim & (head_dim - 1):
        raise ValueError(f"head_dim {head_dim} must be a power of two")
    num_heads = qkv.shape[1] // head_dim - 2 * num_kv_heads
    if qkv.stride(-1) != 1 or qkv.shape[1] != (num_heads + 2 * num_kv_heads) * head_dim:
        raise ValueError(
            f"qkv {tuple(qkv.shape)} must be [N, (Hq+2*Hkv)*D] with contiguous rows "
            f"(Hkv={num_kv_heads}, D={head_dim} from the cache)"
        )
    if num_heads <= 0 or num_heads % num_kv_heads:
        raise ValueError(f"{num_heads} query heads is not a multiple of {num_kv_heads} kv heads")
    if k_cache.stride() != v_cache.stride() or k_cache.stride(-1) != 1 or v_cache.shape != k_cache.shape:
        raise ValueError("k_cache and v_cache must share one layout with a contiguous head_dim")
    if positions.shape != (num_tokens,) or slot_mapping.shape != (num_tokens,):
        raise ValueError(
            f"positions {tuple(positions.shape)} and slot_mapping {tuple(slot_mapping.shape)} must be "
            f"1-D with one entry per token ({num_tokens})"
        )
    if (
        cos_cached.shape[-1] != head_dim
        or sin_cached.shape != cos_cached.shape
        or cos_cached.stride(-1) != 1
        or sin_cached.stride(-1) != 1
    ):
        raise ValueError(f"cos/sin caches {tuple(cos_cached.shape)} must be [max_pos, {head_dim}], contiguous rows")
    for name, w in (("q_weight", q_weight), ("k_weight", k_weight)):
        # weight * x promotes to the weight's dtype: a different dtype would change where the eager op rounds.
        if w is not None and (w.shape != (head_dim,) or w.dtype != qkv.dtype or not w.is_contiguous()):
            raise ValueError(f"{name} must be a contiguous [{head_dim}] tensor of dtype {qkv.dtype}")
    return num_heads, num_kv_heads, head_dim
