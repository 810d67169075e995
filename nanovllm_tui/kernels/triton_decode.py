"""Triton flash-decoding over the paged KV cache: split-K partial softmax per GQA group, then a reduce; CUDA-graph safe."""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
MIN_SPLIT_TOKENS = 256  # below this a split's fixed cost (q load, partial write) outweighs its parallelism
MAX_SPLITS = 32
BALANCE_SPLITS = 8  # below ~15 programs per SM: enough slices that ragged contexts finish together


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
    """One program per (sequence, kv head, split): the whole GQA group attends to one slice of the context.

    Slices are sized from the sequence's own context length (read on device): ctx / NUM_SPLITS, but at
    least SPLIT_MIN tokens, so a short context in a batch sized for long ones uses few splits; splits past
    the context exit at once and write nothing.
    """
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    if LIMIT_ROWS:  # a mixed-batch CUDA graph: only the first *row_limit_ptr rows are decodes
        if seq >= tl.load(row_limit_ptr):
            return
    context_len = tl.load(context_lens_ptr + seq)
    per_split = tl.maximum(tl.cdiv(tl.cdiv(context_len, NUM_SPLITS), BLOCK_N) * BLOCK_N, SPLIT_MIN)
    lo = split * per_split
    if split > 0 and lo >= context_len:  # split 0 always writes, so an empty context still yields zeros
        return
    hi = tl.minimum(lo + per_split, context_len)
    table_row = block_tables_ptr + seq.to(tl.int64) * stride_tb

    # 1. The group's query heads as rows of one tile (padded to 16 for tl.dot), loaded once.
    g = tl.arange(0, GROUP_PAD)
    dims = tl.arange(0, HEAD_DIM)
    g_ok = g < GROUP
    heads = kv_head * GROUP + g
    q = tl.load(
        q_ptr + seq.to(tl.int64) * stride_qb + heads[:, None] * stride_qh + dims[None, :], mask=g_ok[:, None], other=0.0
    )

    m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_DIM], tl.float32)

    # 2. Online softmax over the slice; K and V are read once for the whole group.
    for start in range(lo, hi, BLOCK_N):
        pos = start + tl.arange(0, BLOCK_N)
        pos_ok = pos < hi
        if BLOCK_N <= BLOCK_SIZE:
            block = tl.load(table_row + start // BLOCK_SIZE).to(tl.int64)
        else:
            block = tl.load(table_row + pos // BLOCK_SIZE, mask=pos_ok, other=0).to(tl.int64)
        offs = (block * stride_cb + (pos % BLOCK_SIZE) * stride_co)[:, None] + kv_head * stride_ch + dims[None, :]
        # Slots past the context hold stale data (maybe NaN); zeros keep p * v finite.
        k = tl.load(k_cache_ptr + offs, mask=pos_ok[:, None], other=0.0)
        qk = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        qk = tl.where(pos_ok[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.math.exp2(qk - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_cache_ptr + offs, mask=pos_ok[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    # 3. Empty slices (and padded rows with context 0) leave l = 0: write zeros and lse = -inf.
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


@triton.jit
def _decode_reduce_kernel(
    mid_o_ptr,
    mid_lse_ptr,
    out_ptr,
    context_lens_ptr,
    row_limit_ptr,
    stride_ob,
    stride_oh,
    HEAD_DIM: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    SPLITS_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SPLIT_MIN: tl.constexpr,
    LIMIT_ROWS: tl.constexpr,
):
    """One program per (sequence, query head): combine the splits' partial outputs by their log-sum-exp."""
    seq = tl.program_id(0)
    head = tl.program_id(1)
    if LIMIT_ROWS:
        if seq >= tl.load(row_limit_ptr):
            return
    # The same slicing as the split kernel: only the splits that held keys wrote anything.
    context_len = tl.load(context_lens_ptr + seq)
    per_split = tl.maximum(tl.cdiv(tl.cdiv(context_len, NUM_SPLITS), BLOCK_N) * BLOCK_N, SPLIT_MIN)
    written = tl.maximum(tl.cdiv(context_len, per_split), 1)
    row = seq.to(tl.int64) * tl.num_programs(1) + head
    s = tl.arange(0, SPLITS_PAD)
    dims = tl.arange(0, HEAD_DIM)
    s_ok = s < written
    lse = tl.load(mid_lse_ptr + row * NUM_SPLITS + s, mask=s_ok, other=float("-inf"))
    m = tl.max(lse, 0)
    m = tl.where(m == float("-inf"), 0.0, m)  # context 0: every weight is 0, output 0
    w = tl.math.exp2(lse - m)
    o = tl.load(mid_o_ptr + (row * NUM_SPLITS + s)[:, None] * HEAD_DIM + dims[None, :], mask=s_ok[:, None], other=0.0)
    total = tl.sum(w, 0)
    out = tl.sum(o * w[:, None], 0) / tl.where(total > 0, total, 1.0)
    tl.store(out_ptr + seq.to(tl.int64) * stride_ob + head * stride_oh + dims, out.to(out_ptr.dtype.element_ty))


@functools.cache
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def choose_num_splits(batch: int, num_kv_heads: int, max_blocks: int, block_size: int, num_sms: int) -> int:
    """Splits per sequence from shapes only (so a CUDA graph fixes it).

    From `kernel_bench.py --split-sweep` on an H200 (ragged contexts 100..2048): with >= ~15 programs per
    SM one split is best (splitting only adds partial writes); below that, contexts of different lengths
    leave a tail of long programs, and ~8 splits (each at least MIN_SPLIT_TOKENS) balance it (batch 128:
    84.5 % of copy bandwidth vs 79.9 % unsplit; 64: 73.9 % vs 68.4 %). Few sequences split further so the
    grid still fills the GPU.
    """
    per_sm = batch * num_kv_heads / num_sms
    if per_sm >= 15:
        wanted = 1
    elif per_sm >= 11:
        wanted = 2
    else:
        wanted = max(BALANCE_SPLITS, triton.cdiv(4 * num_sms, batch * num_kv_heads))
    return max(1, min(wanted, _splits_by_length(max_blocks, block_size), MAX_SPLITS))


def _splits_by_length(max_blocks: int, block_size: int) -> int:
    """At most this many splits: MIN_SPLIT_TOKENS slices of the longest context the table can hold."""
    return max(1, max_blocks * block_size // MIN_SPLIT_TOKENS)


def mixed_num_splits(max_blocks: int, block_size: int) -> int:
    """Splits for the decode rows of a mixed (prefill + decode) CUDA graph. Its row count is fixed at
    capture but the decode rows in it vary; they are usually a serving batch of tens, where BALANCE_SPLITS
    is best (at 256 rows it costs ~3 % on the decode part of a few mixed steps)."""
    return min(BALANCE_SPLITS, _splits_by_length(max_blocks, block_size))


def _config(q: torch.Tensor, head_dim: int, block_size: int) -> tuple[int, int, int]:
    """(BLOCK_N, num_warps, num_stages) for this dtype/device (swept on an H200, bf16, D=128)."""
    if not q.is_cuda:
        return 16, 4, 1
    if q.element_size() >= 4 or head_dim > 128:
        return 32, 4, 2  # fp32 tiles are twice as big: stay within shared memory
    # Tiles spanning several small blocks did better with 2 stages (more resident programs, no wave tail).
    return 64, 4, 3 if block_size >= 64 else 2


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
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    assert num_heads % num_kv_heads == 0 and k_cache.shape[3] == head_dim
    assert head_dim >= 16 and head_dim & (head_dim - 1) == 0, "head_dim must be a power of two >= 16"
    assert block_size & (block_size - 1) == 0, "block_size must be a power of two"
    assert q.stride(-1) == 1 and k_cache.stride() == v_cache.stride() and k_cache.stride(-1) == 1
    out = torch.empty_like(q) if out is None else out
    if batch == 0:
        return out
    group = num_heads // num_kv_heads
    block_n, num_warps, num_stages = _config(q, head_dim, block_size)
    if min_split_tokens % block_n:
        raise ValueError(f"min_split_tokens={min_split_tokens} must be a multiple of the kernel tile ({block_n})")
    if num_splits is None:
        num_sms = _num_sms(q.device.index or 0) if q.is_cuda else 4
        num_splits = choose_num_splits(batch, num_kv_heads, block_tables.shape[1], block_size, num_sms)
    # Scratch is allocated per call: inside CUDA-graph capture it comes from the graph's private pool.
    if num_splits > 1:
        mid_o = torch.empty(batch, num_heads, num_splits, head_dim, dtype=torch.float32, device=q.device)
        mid_lse = torch.empty(batch, num_heads, num_splits, dtype=torch.float32, device=q.device)
    else:
        mid_o = mid_lse = out  # unused: the split kernel writes the output directly
    _decode_split_kernel[(batch, num_kv_heads, num_splits)](
        q,
        k_cache,
        v_cache,
        out,
        mid_o,
        mid_lse,
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
        BLOCK_N=block_n,
        NUM_SPLITS=num_splits,
        SPLIT_MIN=min_split_tokens,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        LIMIT_ROWS=row_limit is not None,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    if num_splits > 1:
        _decode_reduce_kernel[(batch, num_heads)](
            mid_o,
            mid_lse,
            out,
            context_lens,
            context_lens if row_limit is None else row_limit,
            out.stride(0),
            out.stride(1),
            HEAD_DIM=head_dim,
            NUM_SPLITS=num_splits,
            SPLITS_PAD=triton.next_power_of_2(num_splits),
            BLOCK_N=block_n,
            SPLIT_MIN=min_split_tokens,
            LIMIT_ROWS=row_limit is not None,
        )
    return out
