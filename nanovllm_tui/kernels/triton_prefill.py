"""Triton paged attention for prefill and mixed batches: variable-length causal queries over the paged KV cache."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from nanovllm_tui.kernels.paged_checks import LOG2E, check_paged


@triton.jit
def _load_kv_tile(
    cache_ptr,
    table_row_ptr,
    start,
    context_len,
    stride_cb,
    stride_co,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    MASKED: tl.constexpr,
):
    """[BLOCK_N, HEAD_DIM] keys or values of positions start..start+BLOCK_N, gathered through the block table
    (cache_ptr already points at this kv head)."""
    pos = start + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, HEAD_DIM)
    if BLOCK_N <= BLOCK_SIZE:
        # The tile lies inside one cache block (start is a BLOCK_N multiple): one table lookup.
        block = tl.load(table_row_ptr + start // BLOCK_SIZE).to(tl.int64)
    else:
        # Small cache blocks: the tile spans several, look each position's block up.
        block = tl.load(table_row_ptr + pos // BLOCK_SIZE, mask=pos < context_len, other=0).to(tl.int64)
    ptrs = cache_ptr + (block * stride_cb + (pos % BLOCK_SIZE) * stride_co)[:, None] + dims[None, :]
    if MASKED:
        # Slots past the context hold stale data (maybe NaN); zeros keep p * v finite.
        return tl.load(ptrs, mask=(pos < context_len)[:, None], other=0.0)
    return tl.load(ptrs)


@triton.jit
def _attend_tiles(
    acc,
    l_i,
    m_i,
    q,
    q_pos,
    k_ptr,
    v_ptr,
    table_row,
    lo,
    hi,
    context_len,
    qk_scale,
    stride_cb,
    stride_co,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    PRECISION: tl.constexpr,
    MASKED: tl.constexpr,
):
    """Online-softmax update of (acc, l, m) with key tiles lo..hi; MASKED applies the causal mask."""
    for start in range(lo, hi, BLOCK_N):
        k = _load_kv_tile(
            k_ptr, table_row, start, context_len, stride_cb, stride_co, BLOCK_SIZE, BLOCK_N, HEAD_DIM, MASKED
        )
        qk = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        if MASKED:
            k_pos = start + tl.arange(0, BLOCK_N)
            visible = (k_pos[None, :] <= q_pos[:, None]) & (k_pos[None, :] < context_len)
            qk = tl.where(visible, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.math.exp2(qk - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _load_kv_tile(
            v_ptr, table_row, start, context_len, stride_cb, stride_co, BLOCK_SIZE, BLOCK_N, HEAD_DIM, MASKED
        )
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _find_tile(cu_seqlens_ptr, first_row_ptr, num_rows, BLOCK_M: tl.constexpr, ROWS_PAD: tl.constexpr):
    """(sequence, query tile) of this program in a TILE_SEARCH grid, counting rows from *first_row_ptr on;
    tile -1: past the last tile (nothing to do)."""
    t = tl.program_id(1)
    r = tl.arange(0, ROWS_PAD)
    r_ok = (r >= tl.load(first_row_ptr)) & (r < num_rows)
    lens = tl.load(cu_seqlens_ptr + r + 1, mask=r_ok, other=0) - tl.load(cu_seqlens_ptr + r, mask=r_ok, other=0)
    ntiles = (lens + BLOCK_M - 1) // BLOCK_M
    cum = tl.cumsum(ntiles, 0)
    seq = tl.sum((cum <= t).to(tl.int32), 0)
    mine = r == seq
    tile = tl.sum(tl.where(mine, cum, 0), 0) - 1 - t  # heaviest (last) tile of a row first
    return seq, tl.where(t >= tl.sum(ntiles, 0), -1, tile)


@triton.jit
def _attend_causal(
    q,
    q_pos,
    k_ptr,
    v_ptr,
    table_row,
    first_pos,
    context_len,
    qk_scale,
    stride_cb,
    stride_co,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Attention output of a query tile whose first query sits at position first_pos: softmax-weighted values."""
    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)  # finite: a fully masked row must not give NaN
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    # 1. Keys before the tile's first query position are visible to every row: no mask needed.
    first_masked = (first_pos // BLOCK_N) * BLOCK_N
    acc, l_i, m_i = _attend_tiles(
        acc, l_i, m_i, q, q_pos, k_ptr, v_ptr, table_row, 0, first_masked, context_len, qk_scale, stride_cb, stride_co,
        BLOCK_SIZE, BLOCK_N, HEAD_DIM, PRECISION, False,
    )  # fmt: skip
    # 2. Keys from there to the tile's last query position need the causal mask.
    end = tl.minimum(context_len, first_pos + BLOCK_M)
    acc, l_i, m_i = _attend_tiles(
        acc, l_i, m_i, q, q_pos, k_ptr, v_ptr, table_row, first_masked, end, context_len, qk_scale, stride_cb,
        stride_co, BLOCK_SIZE, BLOCK_N, HEAD_DIM, PRECISION, True,
    )  # fmt: skip
    return acc / l_i[:, None]


# One program per (query head, sequence, query tile); tiles are launched heaviest (last) first.
# TILE_SEARCH (a mixed batch's CUDA graph, where the grid cannot follow the batch): the grid is (heads, enough
# tiles for any batch of this token count); each program finds its own (sequence, tile) from cu_seqlens,
# counting only rows from *first_row_ptr on (rows before it are decodes, done by the decode kernel), and
# programs past the last tile return at once.
# The block-table width varies step to step in eager mode: specialising on it would recompile mid-run.
@triton.jit(do_not_specialize=["stride_tb", "num_rows"])
def _prefill_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    out_ptr,
    cu_seqlens_ptr,
    context_lens_ptr,
    block_tables_ptr,
    first_row_ptr,
    num_rows,
    qk_scale,
    stride_qt,
    stride_qh,
    stride_ot,
    stride_oh,
    stride_cb,
    stride_co,
    stride_ch,
    stride_tb,
    GROUP: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
    TILE_SEARCH: tl.constexpr,
    ROWS_PAD: tl.constexpr,
):
    """Causal attention of one query tile of one sequence for one query head (see the comment above)."""
    head = tl.program_id(0)
    if TILE_SEARCH:
        seq, tile = _find_tile(cu_seqlens_ptr, first_row_ptr, num_rows, BLOCK_M, ROWS_PAD)
        if tile < 0:
            return
    else:
        seq = tl.program_id(1)
        tile = tl.num_programs(2) - 1 - tl.program_id(2)
    q_start = tl.load(cu_seqlens_ptr + seq)
    q_len = tl.load(cu_seqlens_ptr + seq + 1) - q_start
    m0 = tile * BLOCK_M
    if m0 >= q_len:
        return
    context_len = tl.load(context_lens_ptr + seq)
    prefix = context_len - q_len  # queries are the last q_len positions of the context
    kv_head = head // GROUP
    # The query tile is loaded once; it stays in registers for the whole key loop.
    rows = m0 + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, HEAD_DIM)
    row_ok = rows < q_len
    q_offs = (q_start + rows).to(tl.int64)[:, None] * stride_qt + head * stride_qh + dims[None, :]
    q = tl.load(q_ptr + q_offs, mask=row_ok[:, None], other=0.0)
    out = _attend_causal(
        q, prefix + rows, k_cache_ptr + kv_head * stride_ch, v_cache_ptr + kv_head * stride_ch,
        block_tables_ptr + seq.to(tl.int64) * stride_tb, prefix + m0, context_len, qk_scale, stride_cb, stride_co,
        BLOCK_SIZE, BLOCK_M, BLOCK_N, HEAD_DIM, PRECISION,
    )  # fmt: skip
    o_offs = (q_start + rows).to(tl.int64)[:, None] * stride_ot + head * stride_oh + dims[None, :]
    tl.store(out_ptr + o_offs, out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])


def _config(q: torch.Tensor, head_dim: int, block_size: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for this dtype/device (swept on an H200, bf16, D=128)."""
    if not q.is_cuda:
        return 16, 16, 4, 1  # interpreter: tiny tiles keep tests fast and cross many tile edges
    # One warpgroup on 64x32 tiles beat 128x64/8 warps by ~20%: less register pressure, more programs per SM.
    return 64, 32, 4, 2


def _grid(
    num_heads: int, num_tokens: int, batch: int, max_seqlen_q: int, block_m: int, search: bool
) -> tuple[int, ...]:
    """(heads, sequences, query tiles); with TILE_SEARCH (heads, tiles), as many tiles as any split of num_tokens
    queries over batch rows can need."""
    if search:
        return (num_heads, triton.cdiv(num_tokens, block_m) + batch)
    return (num_heads, batch, triton.cdiv(max_seqlen_q, block_m))


def paged_prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    context_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
    max_seqlen_q: int,
    out: torch.Tensor | None = None,
    first_row: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention for variable-length queries [Nq, Hq, D] over paged keys (see torch_ref).

    first_row (a device scalar; CUDA graphs of mixed batches): rows before it are skipped (decodes), and
    the grid depends only on the shapes (tokens, rows), not on max_seqlen_q.
    """
    num_tokens, num_heads, head_dim = q.shape
    block_size, num_kv_heads = check_paged(q, k_cache, v_cache)
    out = torch.empty_like(q) if out is None else out
    batch = context_lens.shape[0]
    if num_tokens == 0 or batch == 0:
        return out
    block_m, block_n, num_warps, num_stages = _config(q, head_dim, block_size)
    search = first_row is not None
    grid = _grid(num_heads, num_tokens, batch, max_seqlen_q, block_m, search)
    _prefill_kernel[grid](
        q,
        k_cache,
        v_cache,
        out,
        cu_seqlens_q,
        context_lens,
        block_tables,
        first_row if search else cu_seqlens_q,
        batch,
        scale * LOG2E,
        q.stride(0),
        q.stride(1),
        out.stride(0),
        out.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        block_tables.stride(0),
        GROUP=num_heads // num_kv_heads,
        BLOCK_SIZE=block_size,
        HEAD_DIM=head_dim,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        TILE_SEARCH=search,
        ROWS_PAD=max(16, triton.next_power_of_2(batch + 1)) if search else 1,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    return out
