"""Fused sampler: greedy argmax or Gumbel-max temperature sampling plus a non-finite check, reading the logits once.

For T > 0 a row's token is argmax_v(logit_v / T + g_v) with g_v = -log(-log(u_v)) Gumbel noise, which
picks v with probability softmax(logits / T)_v (the Gumbel-max trick); T = 0 rows take argmax_v logit_v.
u_v comes from Philox keyed by the row's 64-bit seed, with counter (lane(v), offset_lo, offset_hi, 0):
the noise of token v depends only on (seed, offset, v), never on the batch or on how the vocabulary is
split over programs, so a seeded request keyed by (its seed, its token position) samples the same tokens
in any batch. Rows with T < MIN_TEMPERATURE are greedy (1/T would overflow). Rows whose scores (logits / T,
what is sampled from) have a NaN or inf return -1. No host syncs: the grid depends on shapes only.

Layout: the vocabulary is cut into NOISE_TILE-token tiles; one Philox call gives four 32-bit words, used
for the four quarters of a tile (token t*TILE + q*TILE/4 + l takes word q of counter t*TILE/4 + l).
Programs are (row, split); each split scans whole tiles and keeps a per-lane running argmax. With more
than one split, a second tiny kernel reduces the splits' partial (max, index) pairs per row. Splitting is
what keeps small batches fast: one program per row would leave all but B SMs idle, and for B = 1 stream
152k tokens through one SM; the split count comes from shapes (about PROGRAMS_PER_SM programs per SM).
The T > 0 path is bound by the Philox rounds and the logs, not by the logits' bytes.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from nanovllm_tui.kernels.sample_ref import MAX_INV_TEMPERATURE, MIN_TEMPERATURE

NOISE_TILE = 1024  # fixed: changing it changes which Philox word each token gets (seeded outputs would change)
MAX_SPLITS = 128  # also the reduce kernel's fixed width: split counts are runtime values, so no recompiles
# ~32 two-warp programs per SM: the best split counts of a sweep on an H200 (benchmarks/sample_bench.py --sweep).
PROGRAMS_PER_SM = 32
NUM_WARPS = 2
NOISE_MODES = ("philox", "off")


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
                # u in [0, 1) never reaches 1; u = 0 (2^-31 odds) is lifted so that g stays finite.
                u = tl.maximum(tl.uint_to_uniform_float(words), 1e-10)
                # The inner log needs full precision near u = 1 (the top of the Gumbel tail): the fast one
                # has a relative error near 1 of order 1 there. The outer one only needs absolute
                # accuracy (its ~2e-6 is far below a bf16 logit's step); precise, it cost a quarter of the time.
                e = -tl.log(u)
                if FAST_LOG:
                    g = -libdevice.fast_logf(e)
                else:
                    g = -tl.log(e)
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


# Split counts and tiles per split change with the batch size: specialising on them (== 1, divisible by 16)
# would compile a new variant mid-serving (~0.2 s of stalled tokens, seen on an H200).
@triton.jit(do_not_specialize=["stride_row", "vocab", "tiles_per_split", "num_splits"])
def _sample_kernel(
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
    num_tiles = tl.cdiv(vocab, TILE)
    tile_lo = split * tiles_per_split
    tile_hi = tl.minimum(tile_lo + tiles_per_split, num_tiles)
    row_ptr = logits_ptr + row.to(tl.int64) * stride_row
    noise_row_ptr = noise_ptr + row.to(tl.int64) * vocab
    temp = tl.load(temps_ptr + row)
    if temp >= MIN_T:
        inv_t = tl.minimum(tl.div_rn(1.0, temp), MAX_INV_T)
        if NOISE:
            seed = tl.load(seeds_ptr + row)
            if HAS_OFFSETS:
                offset = tl.load(offsets_ptr + row)
            else:
                offset = tl.full([], 0, tl.int64)
            # Truncating to 32 bits keeps the right words whatever the sign (>> sign-extends only the top).
            off_lo = (offset & 0xFFFFFFFF).to(tl.uint32)
            off_hi = (offset >> 32).to(tl.uint32)
            m, idx, bad = _scan(
                row_ptr,
                noise_row_ptr,
                vocab,
                tile_lo,
                tile_hi,
                inv_t,
                seed,
                off_lo,
                off_hi,
                TILE,
                True,
                WRITE_NOISE,
                FAST_LOG,
            )
        else:
            m, idx, bad = _scan(
                row_ptr, noise_row_ptr, vocab, tile_lo, tile_hi, inv_t, 0, 0, 0, TILE, False, False, False
            )
    else:
        m, idx, bad = _scan(row_ptr, noise_row_ptr, vocab, tile_lo, tile_hi, 1.0, 0, 0, 0, TILE, False, False, False)
    if SPLIT:
        # A non-finite split reports NaN as its max; the reduce turns that into -1 for the row. (x == x is
        # Triton's NaN test.)
        tl.store(part_val_ptr + row * num_splits + split, tl.where(bad == bad, m, float("nan")))  # noqa: PLR0124
        tl.store(part_idx_ptr + row * num_splits + split, idx)
    else:
        tl.store(out_ptr + row, tl.where(bad == bad, idx.to(tl.int64), -1))  # noqa: PLR0124


@triton.jit(do_not_specialize=["num_splits"])
def _reduce_kernel(part_val_ptr, part_idx_ptr, out_ptr, num_splits, SPLITS_PAD: tl.constexpr):
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


@functools.cache
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def choose_num_splits(batch: int, vocab: int, num_sms: int) -> int:
    """Splits per row from shapes only: about PROGRAMS_PER_SM programs per SM, each with at least one tile."""
    num_tiles = triton.cdiv(vocab, NOISE_TILE)
    wanted = triton.cdiv(PROGRAMS_PER_SM * num_sms, max(batch, 1))
    return max(1, min(wanted, num_tiles, MAX_SPLITS))


def sample(
    logits: torch.Tensor,
    temperatures: torch.Tensor,
    seeds: torch.Tensor | None = None,
    offsets: torch.Tensor | None = None,
    *,
    noise: str = "philox",
    num_splits: int | None = None,
    noise_out: torch.Tensor | None = None,
    num_warps: int = NUM_WARPS,
) -> torch.Tensor:
    """One int64 token per row of logits [B, V] (bf16/fp16/fp32, unit stride along V); -1 for a non-finite row.

    temperatures fp32 [B] (below MIN_TEMPERATURE: greedy); seeds int64 [B] are the rows' Philox keys and
    offsets int64 [B] (None = 0) their counters, e.g. (request seed, token position). noise="off" drops the Gumbel noise
    (argmax of logits / T, for tests). noise_out, an fp32 [B, V] tensor, receives the noise drawn for
    sampled rows (tests compare against kernels.sample_ref.sample_reference with it).
    """
    if logits.dim() != 2 or logits.stride(1) != 1:
        raise ValueError(
            f"logits must be [B, V] with unit stride along V; got shape {tuple(logits.shape)} strides {logits.stride()}"
        )
    if logits.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"logits dtype {logits.dtype} is not supported; use bfloat16, float16 or float32")
    if noise not in NOISE_MODES:
        raise ValueError(f"noise={noise!r} must be one of {NOISE_MODES}")
    batch, vocab = logits.shape
    use_noise = noise == "philox"
    _check_rows("temperatures", temperatures, batch, torch.float32, logits.device)
    if use_noise:
        if seeds is None:
            raise ValueError("seeds are required when noise='philox'")
        _check_rows("seeds", seeds, batch, torch.int64, logits.device)
    if offsets is not None:
        _check_rows("offsets", offsets, batch, torch.int64, logits.device)
    if noise_out is not None and (
        noise_out.shape != (batch, vocab) or noise_out.dtype != torch.float32 or not noise_out.is_contiguous()
    ):
        raise ValueError(f"noise_out must be a contiguous float32 [{batch}, {vocab}] tensor")
    out = torch.empty(batch, dtype=torch.int64, device=logits.device)
    if batch == 0:
        return out
    if num_splits is None:
        num_sms = _num_sms(logits.device.index or 0) if logits.is_cuda else 4
        num_splits = choose_num_splits(batch, vocab, num_sms)
    num_tiles = triton.cdiv(vocab, NOISE_TILE)
    tiles_per_split = triton.cdiv(num_tiles, max(1, min(num_splits, num_tiles)))
    num_splits = triton.cdiv(num_tiles, tiles_per_split)  # no empty split
    if num_splits > MAX_SPLITS:
        raise ValueError(f"num_splits={num_splits} exceeds MAX_SPLITS={MAX_SPLITS}")
    # Scratch per call: inside CUDA-graph capture it comes from the graph's private pool.
    if num_splits > 1:
        part_val = torch.empty(batch, num_splits, dtype=torch.float32, device=logits.device)
        part_idx = torch.empty(batch, num_splits, dtype=torch.int32, device=logits.device)
    else:
        part_val, part_idx = out, out  # unused: the kernel writes the tokens directly
    _sample_kernel[(batch, num_splits)](
        logits,
        temperatures,
        seeds if seeds is not None else out,
        offsets if offsets is not None else out,
        out,
        part_val,
        part_idx,
        noise_out if noise_out is not None else out,
        logits.stride(0),
        vocab,
        tiles_per_split,
        num_splits,
        TILE=NOISE_TILE,
        SPLIT=num_splits > 1,
        NOISE=use_noise,
        HAS_OFFSETS=offsets is not None,
        WRITE_NOISE=noise_out is not None,
        MAX_INV_T=MAX_INV_TEMPERATURE,
        MIN_T=MIN_TEMPERATURE,
        FAST_LOG=logits.is_cuda and torch.version.hip is None,  # libdevice's fast log: NVIDIA only, not interpreted
        num_warps=num_warps,
    )
    if num_splits > 1:
        _reduce_kernel[(batch,)](part_val, part_idx, out, num_splits, SPLITS_PAD=MAX_SPLITS)
    return out


def _check_rows(name: str, t: torch.Tensor, batch: int, dtype: torch.dtype, device: torch.device) -> None:
    """A [B] tensor of the given dtype on the logits' device (host-side checks only: no sync)."""
    if t.shape != (batch,) or t.dtype != dtype or t.device != device or not t.is_contiguous():
        raise ValueError(
            f"{name} must be a contiguous {dtype} [{batch}] tensor on {device}; got "
            f"{t.dtype} {tuple(t.shape)} on {t.device}"
        )
