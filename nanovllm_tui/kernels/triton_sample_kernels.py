"""The fused sampler's Triton kernels; nanovllm_tui/kernels/triton_sample.py launches them and describes the
algorithm (Gumbel-max with Philox noise keyed by (seed, offset, token), tiles, splits and their reduction)."""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra import libdevice


@triton.jit
def _gumbel(words, FAST_LOG: tl.constexpr):
    """Standard Gumbel noise -log(-log(u)) from 32-bit Philox words."""
    # u in [0, 1) never reaches 1; u = 0 (2^-31 odds) is lifted so that g stays finite.
    u = tl.maximum(tl.uint_to_uniform_float(words), 1e-10)
    # The inner log needs full precision near u = 1 (the top of the Gumbel tail): the fast one has a relative
    # error near 1 of order 1 there. The outer one only needs absolute accuracy (its ~2e-6 is far below a
    # bf16 logit's step); precise, it cost a quarter of the time.
    e = -tl.log(u)
    if FAST_LOG:
        return -libdevice.fast_logf(e)
    return -tl.log(e)


@triton.jit
def _scan(
    row_ptr,
    noise_row_ptr,
    vocab,
    tile_lo,
    tile_hi,
    inv_t,
    seed,
    off_lo,
    off_hi,
    TILE: tl.constexpr,
    WITH_NOISE: tl.constexpr,
    WRITE_NOISE: tl.constexpr,
    FAST_LOG: tl.constexpr,
):
    """(max score, its lowest index, NaN-if-non-finite) over tiles [tile_lo, tile_hi) of one row.

    The non-finite check is on x * inv_t, what is sampled from: finite logits can still overflow there."""
    Q: tl.constexpr = TILE // 4
    lane = tl.arange(0, Q)
    best_val = tl.full([Q], float("-inf"), tl.float32)
    best_idx = tl.zeros([Q], tl.int32)
    bad = tl.zeros([Q], tl.float32)
    for t in range(tile_lo, tile_hi):
        if WITH_NOISE:
            counter = (t * Q + lane).to(tl.uint32)
            zero = counter * 0
            w0, w1, w2, w3 = tl.philox(seed, counter, off_lo + zero, off_hi + zero, zero)
        # Quarter q of the tile takes Philox word q; unrolled at compile time.
        for q in tl.static_range(4):
            idx = t * TILE + q * Q + lane
            ok = idx < vocab
            x = tl.load(row_ptr + idx, mask=ok, other=0.0).to(tl.float32)
            scaled = x * inv_t
            bad = bad + scaled * 0.0  # turns NaN for good once any score is NaN or +-inf
            if WITH_NOISE:
                if q == 0:
                    words = w0
                elif q == 1:
                    words = w1
                elif q == 2:
                    words = w2
                else:
                    words = w3
                g = _gumbel(words, FAST_LOG)
                if WRITE_NOISE:
                    tl.store(noise_row_ptr + idx, g, mask=ok)
                s = scaled + g
            else:
                s = scaled
            s = tl.where(ok, s, float("-inf"))
            # Strict >: a lane visits its tokens in increasing order, so ties keep the lowest index.
            take = s > best_val
            best_val = tl.where(take, s, best_val)
            best_idx = tl.where(take, idx, best_idx)
    m = tl.max(best_val, 0)
    idx = tl.min(tl.where(best_val == m, best_idx, 2147483647), 0)
    return m, idx, tl.sum(bad, 0)


@triton.jit
def _scan_row(
    row_ptr,
    noise_row_ptr,
    vocab,
    tile_lo,
    tile_hi,
    temp,
    seed_ptr,
    offset_ptr,
    TILE: tl.constexpr,
    NOISE: tl.constexpr,
    HAS_OFFSETS: tl.constexpr,
    WRITE_NOISE: tl.constexpr,
    MAX_INV_T: tl.constexpr,
    MIN_T: tl.constexpr,
    FAST_LOG: tl.constexpr,
):
    """_scan for one row at its temperature: greedy below MIN_T, else scaled by 1/T, with noise keyed by the
    row's (seed, offset) when NOISE."""
    if temp >= MIN_T:
        inv_t = tl.minimum(tl.div_rn(1.0, temp), MAX_INV_T)
        if NOISE:
            seed = tl.load(seed_ptr)
            if HAS_OFFSETS:
                offset = tl.load(offset_ptr)
            else:
                offset = tl.full([], 0, tl.int64)
            # Truncating to 32 bits keeps the right words whatever the sign (>> sign-extends only the top).
            lo = (offset & 0xFFFFFFFF).to(tl.uint32)
            hi = (offset >> 32).to(tl.uint32)
            m, idx, bad = _scan(
                row_ptr, noise_row_ptr, vocab, tile_lo, tile_hi, inv_t, seed, lo, hi, TILE, True, WRITE_NOISE, FAST_LOG
            )
        else:
            m, idx, bad = _scan(
                row_ptr, noise_row_ptr, vocab, tile_lo, tile_hi, inv_t, 0, 0, 0, TILE, False, False, False
            )
    else:
        m, idx, bad = _scan(row_ptr, noise_row_ptr, vocab, tile_lo, tile_hi, 1.0, 0, 0, 0, TILE, False, False, False)
    return m, idx, bad


# Split counts and tiles per split change with the batch size: specialising on them (== 1, divisible by 16)
# would compile a new variant mid-serving (~0.2 s of stalled tokens, seen on an H200).
@triton.jit(do_not_specialize=["stride_row", "vocab", "tiles_per_split", "num_splits"])
def sample_kernel(
    logits_ptr,
    temps_ptr,
    seeds_ptr,
    offsets_ptr,
    out_ptr,
    part_val_ptr,
    part_idx_ptr,
    noise_ptr,
    stride_row,
    vocab,
    tiles_per_split,
    num_splits,
    TILE: tl.constexpr,
    SPLIT: tl.constexpr,
    NOISE: tl.constexpr,
    HAS_OFFSETS: tl.constexpr,
    WRITE_NOISE: tl.constexpr,
    MAX_INV_T: tl.constexpr,
    MIN_T: tl.constexpr,
    FAST_LOG: tl.constexpr,
):
    """One program per (row, split): the split's best (score, index) and non-finite flag, or the token if 1 split."""
    row = tl.program_id(0)
    split = tl.program_id(1)
    tile_lo = split * tiles_per_split
    tile_hi = tl.minimum(tile_lo + tiles_per_split, tl.cdiv(vocab, TILE))
    m, idx, bad = _scan_row(
        logits_ptr + row.to(tl.int64) * stride_row,
        noise_ptr + row.to(tl.int64) * vocab,
        vocab,
        tile_lo,
        tile_hi,
        tl.load(temps_ptr + row),
        seeds_ptr + row,
        offsets_ptr + row,
        TILE,
        NOISE,
        HAS_OFFSETS,
        WRITE_NOISE,
        MAX_INV_T,
        MIN_T,
        FAST_LOG,
    )
    if SPLIT:
        # A non-finite split reports NaN as its max; the reduce turns that into -1 for the row. (x == x is
        # Triton's NaN test.)
        tl.store(part_val_ptr + row * num_splits + split, tl.where(bad == bad, m, float("nan")))  # noqa: PLR0124
        tl.store(part_idx_ptr + row * num_splits + split, idx)
    else:
        tl.store(out_ptr + row, tl.where(bad == bad, idx.to(tl.int64), -1))  # noqa: PLR0124


@triton.jit(do_not_specialize=["num_splits"])
def reduce_kernel(part_val_ptr, part_idx_ptr, out_ptr, num_splits, SPLITS_PAD: tl.constexpr):
    """One program per row: the max over the splits' partial maxima, lowest index on ties, -1 if any was NaN."""
    row = tl.program_id(0)
    s = tl.arange(0, SPLITS_PAD)
    ok = s < num_splits
    val = tl.load(part_val_ptr + row * num_splits + s, mask=ok, other=float("-inf"))
    idx = tl.load(part_idx_ptr + row * num_splits + s, mask=ok, other=2147483647)
    bad = tl.sum(tl.where(val == val, 0, 1), 0) > 0  # noqa: PLR0124 (NaN test)
    val = tl.where(val == val, val, float("-inf"))  # noqa: PLR0124
    m = tl.max(val, 0)
    best = tl.min(tl.where(val == m, idx, 2147483647), 0)
    tl.store(out_ptr + row, tl.where(bad, -1, best.to(tl.int64)))
