"""Triton flash-decoding over the paged KV cache: split-K partial softmax per GQA group, then a reduce; CUDA-graph safe."""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from nanovllm_tui.kernels.decode_splits import MIN_SPLIT_TOKENS, choose_num_splits, num_sms, reduce_splits
from nanovllm_tui.kernels.paged_checks import LOG2E, check_paged


@triton.jit
def _attend_slice(
    q,
    k_ptr,
    v_ptr,
    table_row,
    lo,
    hi,
    qk_scale,
    stride_cb,
    stride_co,
    GROUP_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Online softmax of the group's queries over context positions lo..hi; K and V are read once for the
    whole group (k_ptr / v_ptr already point at this kv head). Returns (acc, l, m)."""
    dims = tl.arange(0, HEAD_DIM)
    m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_DIM], tl.float32)
    for start in range(lo, hi, BLOCK_N):
        pos = start + tl.arange(0, BLOCK_N)
        pos_ok = pos < hi
        if BLOCK_N <= BLOCK_SIZE:
            block = tl.load(table_row + start // BLOCK_SIZE).to(tl.int64)
        else:
            block = tl.load(table_row + pos // BLOCK_SIZE, mask=pos_ok, other=0).to(tl.int64)
        offs = (block * stride_cb + (pos % BLOCK_SIZE) * stride_co)[:, None] + dims[None, :]
        # Slots past the context hold stale data (maybe NaN); zeros keep p * v finite.
        k = tl.load(k_ptr + offs, mask=pos_ok[:, None], other=0.0)
        qk = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        qk = tl.where(pos_ok[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.math.exp2(qk - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_ptr + offs, mask=pos_ok[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _write_split(
    acc,
    l_i,
    m_i,
    out_ptr,
    mid_o_ptr,
    mid_lse_ptr,
    seq,
    heads,
    split,
    g_ok,
    stride_ob,
    stride_oh,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
):
    """A slice's normalised output: the output itself with one split, else its partial (and log-sum-exp) in
    the scratch. Empty slices (and padded rows with context 0) leave l = 0: zeros and lse = -inf."""
    dims = tl.arange(0, HEAD_DIM)
    has_keys = l_i > 0
    o = acc / tl.where(has_keys, l_i, 1.0)[:, None]
    if NUM_SPLITS == 1:
        o_ptrs = out_ptr + seq.to(tl.int64) * stride_ob + heads[:, None] * stride_oh + dims[None, :]
        tl.store(o_ptrs, o.to(out_ptr.dtype.element_ty), mask=g_ok[:, None])
    else:
        # Scratch is contiguous [B, Hq, NUM_SPLITS, (HEAD_DIM)] fp32.
        row = (seq.to(tl.int64) * (tl.num_programs(1) * GROUP) + heads) * NUM_SPLITS + split
        tl.store(mid_o_ptr + row[:, None] * HEAD_DIM + dims[None, :], o, mask=g_ok[:, None])
        lse = tl.where(has_keys, m_i + tl.math.log2(tl.where(has_keys, l_i, 1.0)), float("-inf"))
        tl.store(mid_lse_ptr + row, lse, mask=g_ok)


# One program per (sequence, kv head, split): the whole GQA group attends to one slice of the context.
# Slices are sized from the sequence's own context length (read on device): ctx / NUM_SPLITS, but at least
# SPLIT_MIN tokens, so a short context in a batch sized for long ones uses few splits; splits past the context
# exit at once and write nothing.
# The block-table width varies step to step in eager mode: specialising on it would recompile mid-run.
@triton.jit(do_not_specialize=["stride_tb"])
def _decode_split_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    out_ptr,
    mid_o_ptr,
    mid_lse_ptr,
    context_lens_ptr,
    block_tables_ptr,
    row_limit_ptr,
    qk_scale,
    stride_qb,
    stride_qh,
    stride_ob,
    stride_oh,
    stride_cb,
    stride_co,
    stride_ch,
    stride_tb,
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    SPLIT_MIN: tl.constexpr,
    PRECISION: tl.constexpr,
    LIMIT_ROWS: tl.constexpr,
):
    """Flash-decoding of one slice of one sequence's context for one GQA group (see the comment above)."""
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    # Nested, not `and`: the load stays out of the kernel when LIMIT_ROWS is off, whatever Triton's short-circuiting.
    if LIMIT_ROWS:  # noqa: SIM102  (a mixed-batch CUDA graph: only the first *row_limit_ptr rows are decodes)
        if seq >= tl.load(row_limit_ptr):
            return
    context_len = tl.load(context_lens_ptr + seq)
    per_split = tl.maximum(tl.cdiv(tl.cdiv(context_len, NUM_SPLITS), BLOCK_N) * BLOCK_N, SPLIT_MIN)
    lo = split * per_split
    if split > 0 and lo >= context_len:  # split 0 always writes, so an empty context still yields zeros
        return
    hi = tl.minimum(lo + per_split, context_len)
    # The group's query heads as rows of one tile (padded to 16 for tl.dot), loaded once.
    g = tl.arange(0, GROUP_PAD)
    dims = tl.arange(0, HEAD_DIM)
    g_ok = g < GROUP
    heads = kv_head * GROUP + g
    q = tl.load(
        q_ptr + seq.to(tl.int64) * stride_qb + heads[:, None] * stride_qh + dims[None, :], mask=g_ok[:, None], other=0.0
    )
    acc, l_i, m_i = _attend_slice(
        q, k_cache_ptr + kv_head * stride_ch, v_cache_ptr + kv_head * stride_ch,
        block_tables_ptr + seq.to(tl.int64) * stride_tb, lo, hi, qk_scale, stride_cb, stride_co,
        GROUP_PAD, BLOCK_SIZE, HEAD_DIM, BLOCK_N, PRECISION,
    )  # fmt: skip
    _write_split(
        acc, l_i, m_i, out_ptr, mid_o_ptr, mid_lse_ptr, seq, heads, split, g_ok, stride_ob, stride_oh,
        GROUP, HEAD_DIM, NUM_SPLITS,
    )  # fmt: skip


def _config(q: torch.Tensor, head_dim: int, block_size: int) -> tuple[int, int, int]:
    """(BLOCK_N, num_warps, num_stages) for this dtype/device (swept on an H200, bf16, D=128)."""
    if not q.is_cuda:
        return 16, 4, 1
    if q.element_size() >= 4 or head_dim > 128:
        return 32, 4, 2  # fp32 tiles are twice as big: stay within shared memory
    # Tiles spanning several small blocks did better with 2 stages (more resident programs, no wave tail).
    return 64, 4, 3 if block_size >= 64 else 2


class _Plan(NamedTuple):
    """How one call runs: tile width, splits per sequence and their minimum length, and the launch config."""

    block_n: int
    num_splits: int
    split_min: int
    num_warps: int
    num_stages: int


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    context_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
    num_splits: int | None = None,
    out: torch.Tensor | None = None,
    row_limit: torch.Tensor | None = None,
    min_split_tokens: int = MIN_SPLIT_TOKENS,
) -> torch.Tensor:
    """One query per sequence, q [B, Hq, D], over context_lens[b] cached tokens; no host syncs.

    row_limit (a device scalar): only rows below it are decodes; the rest are skipped, their output
    rows untouched (a mixed batch's CUDA graph, where that count changes from replay to replay).
    """
    batch, num_heads, head_dim = q.shape
    batch = min(batch, context_lens.shape[0])
    block_size, num_kv_heads = check_paged(q, k_cache, v_cache)
    out = torch.empty_like(q) if out is None else out
    if batch == 0:
        return out
    block_n, num_warps, num_stages = _config(q, head_dim, block_size)
    if min_split_tokens % block_n:
        raise ValueError(f"min_split_tokens={min_split_tokens} must be a multiple of the kernel tile ({block_n})")
    if num_splits is None:
        sms = num_sms(q.device.index or 0) if q.is_cuda else 4
        num_splits = choose_num_splits(batch, num_kv_heads, block_tables.shape[1], block_size, sms)
    plan = _Plan(block_n, num_splits, min_split_tokens, num_warps, num_stages)
    # Scratch is allocated per call: inside CUDA-graph capture it comes from the graph's private pool.
    if num_splits > 1:
        mid_o = torch.empty(batch, num_heads, num_splits, head_dim, dtype=torch.float32, device=q.device)
        mid_lse = torch.empty(batch, num_heads, num_splits, dtype=torch.float32, device=q.device)
    else:
        mid_o = mid_lse = out  # unused: the split kernel writes the output directly
    _launch_split(q, k_cache, v_cache, out, (mid_o, mid_lse), context_lens, block_tables, row_limit, scale, batch, plan)
    if num_splits > 1:
        reduce_splits(mid_o, mid_lse, out, context_lens, row_limit, batch, num_splits, block_n, min_split_tokens)
    return out


def _launch_split(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    out: torch.Tensor,
    scratch: tuple[torch.Tensor, torch.Tensor],
    context_lens: torch.Tensor,
    block_tables: torch.Tensor,
    row_limit: torch.Tensor | None,
    scale: float,
    batch: int,
    plan: _Plan,
) -> None:
    """The split kernel over (sequence, kv head, split)."""
    num_heads, head_dim = q.shape[1], q.shape[2]
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_heads // num_kv_heads
    _decode_split_kernel[(batch, num_kv_heads, plan.num_splits)](
        q,
        k_cache,
        v_cache,
        out,
        scratch[0],
        scratch[1],
        context_lens,
        block_tables,
        context_lens if row_limit is None else row_limit,
        scale * LOG2E,
        q.stride(0),
        q.stride(1),
        out.stride(0),
        out.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        block_tables.stride(0),
        GROUP=group,
        GROUP_PAD=max(16, triton.next_power_of_2(group)),
        BLOCK_SIZE=block_size,
        HEAD_DIM=head_dim,
        BLOCK_N=plan.block_n,
        NUM_SPLITS=plan.num_splits,
        SPLIT_MIN=plan.split_min,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        LIMIT_ROWS=row_limit is not None,
        num_warps=plan.num_warps,
        num_stages=plan.num_stages,
    )
