"""Flash-decoding's splits: how many slices the decode kernel cuts each sequence's context into (from shapes
only, so a CUDA graph fixes it), and the kernel that combines the slices' partial outputs."""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

MIN_SPLIT_TOKENS = 256  # below this a split's fixed cost (q load, partial write) outweighs its parallelism
MAX_SPLITS = 32
BALANCE_SPLITS = 8  # below ~15 programs per SM: enough slices that ragged contexts finish together


@functools.cache
def num_sms(device_index: int) -> int:
    """Streaming multiprocessors of a CUDA device (cached: the split choice reads it every call)."""
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
    return max(1, min(wanted, splits_by_length(max_blocks, block_size), MAX_SPLITS))


def splits_by_length(max_blocks: int, block_size: int) -> int:
    """At most this many splits: MIN_SPLIT_TOKENS slices of the longest context the table can hold."""
    return max(1, max_blocks * block_size // MIN_SPLIT_TOKENS)


def mixed_num_splits(max_blocks: int, block_size: int) -> int:
    """Splits for the decode rows of a mixed (prefill + decode) CUDA graph. Its row count is fixed at
    capture but the decode rows in it vary; they are usually a serving batch of tens, where BALANCE_SPLITS
    is best (at 256 rows it costs ~3 % on the decode part of a few mixed steps)."""
    return min(BALANCE_SPLITS, splits_by_length(max_blocks, block_size))


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
    if LIMIT_ROWS:  # noqa: SIM102  (nested, as in the split kernel)
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


def reduce_splits(
    mid_o: torch.Tensor,
    mid_lse: torch.Tensor,
    out: torch.Tensor,
    context_lens: torch.Tensor,
    row_limit: torch.Tensor | None,
    batch: int,
    num_splits: int,
    block_n: int,
    split_min: int,
) -> None:
    """out [B, Hq, D] from the split kernel's partials mid_o [B, Hq, S, D] and log-sum-exps mid_lse [B, Hq, S]
    (the same block_n and split_min, so both kernels slice a context alike); row_limit as in the decode call."""
    _decode_reduce_kernel[(batch, out.shape[1])](
        mid_o,
        mid_lse,
        out,
        context_lens,
        context_lens if row_limit is None else row_limit,
        out.stride(0),
        out.stride(1),
        HEAD_DIM=out.shape[2],
        NUM_SPLITS=num_splits,
        SPLITS_PAD=triton.next_power_of_2(num_splits),
        BLOCK_N=block_n,
        SPLIT_MIN=split_min,
        LIMIT_ROWS=row_limit is not None,
    )
