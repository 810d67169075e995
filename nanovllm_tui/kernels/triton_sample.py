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

from nanovllm_tui.kernels.sample_ref import MAX_INV_TEMPERATURE, MIN_TEMPERATURE
from nanovllm_tui.kernels.triton_sample_kernels import reduce_kernel, sample_kernel

NOISE_TILE = 1024  # fixed: changing it changes which Philox word each token gets (seeded outputs would change)
MAX_SPLITS = 128  # also the reduce kernel's fixed width: split counts are runtime values, so no recompiles
# ~32 two-warp programs per SM: the best split counts of a sweep on an H200 (benchmarks/sample_bench.py --sweep).
PROGRAMS_PER_SM = 32
NUM_WARPS = 2
NOISE_MODES = ("philox", "off")


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
    offsets int64 [B] (None = 0) their counters, e.g. (request seed, token position). noise="off" drops the
    Gumbel noise (argmax of logits / T, for tests). noise_out, an fp32 [B, V] tensor, receives the noise drawn
    for sampled rows (tests compare against kernels.sample_ref.sample_reference with it).
    """
    _check_args(logits, temperatures, seeds, offsets, noise, noise_out)
    batch, vocab = logits.shape
    out = torch.empty(batch, dtype=torch.int64, device=logits.device)
    if batch == 0:
        return out
    num_splits, tiles_per_split = _plan_splits(batch, vocab, num_splits, logits.device)
    # Scratch per call: inside CUDA-graph capture it comes from the graph's private pool.
    if num_splits > 1:
        part_val = torch.empty(batch, num_splits, dtype=torch.float32, device=logits.device)
        part_idx = torch.empty(batch, num_splits, dtype=torch.int32, device=logits.device)
    else:
        part_val, part_idx = out, out  # unused: the kernel writes the tokens directly
    sample_kernel[(batch, num_splits)](
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
        NOISE=noise == "philox",
        HAS_OFFSETS=offsets is not None,
        WRITE_NOISE=noise_out is not None,
        MAX_INV_T=MAX_INV_TEMPERATURE,
        MIN_T=MIN_TEMPERATURE,
        FAST_LOG=logits.is_cuda and torch.version.hip is None,  # libdevice's fast log: NVIDIA only, not interpreted
        num_warps=num_warps,
    )
    if num_splits > 1:
        reduce_kernel[(batch,)](part_val, part_idx, out, num_splits, SPLITS_PAD=MAX_SPLITS)
    return out


def _plan_splits(batch: int, vocab: int, num_splits: int | None, device: torch.device) -> tuple[int, int]:
    """(splits per row, tiles per split): the given split count or one chosen from shapes, with no empty split."""
    if num_splits is None:
        num_sms = _num_sms(device.index or 0) if device.type == "cuda" else 4
        num_splits = choose_num_splits(batch, vocab, num_sms)
    num_tiles = triton.cdiv(vocab, NOISE_TILE)
    tiles_per_split = triton.cdiv(num_tiles, max(1, min(num_splits, num_tiles)))
    num_splits = triton.cdiv(num_tiles, tiles_per_split)
    if num_splits > MAX_SPLITS:
        raise ValueError(f"num_splits={num_splits} exceeds MAX_SPLITS={MAX_SPLITS}")
    return num_splits, tiles_per_split


def _check_args(
    logits: torch.Tensor,
    temperatures: torch.Tensor,
    seeds: torch.Tensor | None,
    offsets: torch.Tensor | None,
    noise: str,
    noise_out: torch.Tensor | None,
) -> None:
    """sample()'s argument checks, on the host only (no sync)."""
    if logits.dim() != 2 or logits.stride(1) != 1:
        raise ValueError(
            f"logits must be [B, V] with unit stride along V; got shape {tuple(logits.shape)} strides {logits.stride()}"
        )
    if logits.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"logits dtype {logits.dtype} is not supported; use bfloat16, float16 or float32")
    if noise not in NOISE_MODES:
        raise ValueError(f"noise={noise!r} must be one of {NOISE_MODES}")
    batch, vocab = logits.shape
    _check_rows("temperatures", temperatures, batch, torch.float32, logits.device)
    if noise == "philox":
        if seeds is None:
            raise ValueError("seeds are required when noise='philox'")
        _check_rows("seeds", seeds, batch, torch.int64, logits.device)
    if offsets is not None:
        _check_rows("offsets", offsets, batch, torch.int64, logits.device)
    if noise_out is not None and (
        noise_out.shape != (batch, vocab) or noise_out.dtype != torch.float32 or not noise_out.is_contiguous()
    ):
        raise ValueError(f"noise_out must be a contiguous float32 [{batch}, {vocab}] tensor")


def _check_rows(name: str, t: torch.Tensor, batch: int, dtype: torch.dtype, device: torch.device) -> None:
    """A [B] tensor of the given dtype on the logits' device (host-side checks only: no sync)."""
    if t.shape != (batch,) or t.dtype != dtype or t.device != device or not t.is_contiguous():
        raise ValueError(
            f"{name} must be a contiguous {dtype} [{batch}] tensor on {device}; got "
            f"{t.dtype} {tuple(t.shape)} on {t.device}"
        )
