"""GPU benchmark of sampling: the torch Sampler path (plus ModelRunner's isfinite pass) vs the fused Triton kernel.

Per (batch, temperature): microseconds per call (CUDA events around each call, L2 flushed between calls,
median of --iters) and GB/s against the logits' bytes (bf16 [B, V]: read once is the floor).

    PYTHONPATH=. python3 benchmarks/sample_bench.py [--vocab 151936] [--iters 200] [--sweep]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from functools import partial

import torch

from nanovllm_tui.layers.sampler import Sampler

BATCHES = (1, 64, 256)
TEMPERATURES = (0.6, 0.0)
DTYPE = torch.bfloat16
L2_FLUSH_BYTES = 256 << 20  # above any current L2, so every call reads its logits from HBM


def old_path(sampler: Sampler, logits: torch.Tensor, temps: torch.Tensor, all_greedy: bool) -> torch.Tensor:
    """What ModelRunner.sample ran before the fused kernel: the torch Sampler, then the non-finite check."""
    tokens = sampler(logits, temps, None, None, None, all_greedy=all_greedy)
    if all_greedy:
        finite = torch.isfinite(logits.gather(1, tokens.unsqueeze(1)).squeeze(1))
    else:
        finite = torch.isfinite(logits).all(dim=-1)
    return torch.where(finite, tokens, -1)


def time_us(fn: Callable[[], object], iters: int) -> float:
    """Median microseconds of one call, each timed alone with CUDA events after an L2 flush."""
    flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device="cuda")
    for _ in range(5):
        fn()
    times = []
    for _ in range(iters):
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return statistics.median(times)


def inputs(batch: int, vocab: int, temperature: float):
    logits = (3 * torch.randn(batch, vocab, device="cuda")).to(DTYPE)
    temps = torch.full((batch,), temperature, device="cuda")
    seeds = torch.randint(0, 2**62, (batch,), device="cuda")
    offsets = torch.randint(0, 4096, (batch,), device="cuda")
    return logits, temps, seeds, offsets


def run_table(vocab: int, iters: int) -> None:
    from nanovllm_tui.kernels.triton_sample import sample

    sampler = Sampler()
    print(f"\nSampling, bf16 logits [B, {vocab}]; {torch.cuda.get_device_name()}; median of {iters} calls, L2 flushed")
    print(f"{'batch':>6} {'temp':>5} {'old us':>9} {'old GB/s':>9} {'fused us':>9} {'fused GB/s':>10} {'speedup':>8}")
    for batch in BATCHES:
        for temperature in TEMPERATURES:
            logits, temps, seeds, offsets = inputs(batch, vocab, temperature)
            greedy = temperature == 0
            old_us = time_us(partial(old_path, sampler, logits, temps, greedy), iters)
            new_us = time_us(partial(sample, logits, temps, seeds, offsets), iters)
            nbytes = logits.numel() * logits.element_size()
            print(
                f"{batch:>6} {temperature:>5} {old_us:>9.1f} {nbytes / old_us / 1e3:>9.0f} "
                f"{new_us:>9.1f} {nbytes / new_us / 1e3:>10.0f} {old_us / new_us:>7.1f}x"
            )
            del logits


def run_sweep(vocab: int, iters: int) -> None:
    """Fused kernel time over tile sizes, split counts and warps: the data behind the module's constants.

    The tile is patched into the module for the sweep only: it fixes which Philox word each token gets,
    so changing it for real changes seeded outputs."""
    from nanovllm_tui.kernels import triton_sample

    sms = triton_sample._num_sms(0)
    default_tile = triton_sample.NOISE_TILE
    print(f"\nSweep: us per call (t=tile, s=splits, w=warps); {sms} SMs; default tile {default_tile}")
    try:
        for tile in (1024, 2048, 4096):
            triton_sample.NOISE_TILE = tile
            for batch in BATCHES:
                for temperature in TEMPERATURES:
                    logits, temps, seeds, offsets = inputs(batch, vocab, temperature)
                    default = triton_sample.choose_num_splits(batch, vocab, sms)
                    num_tiles = -(-vocab // tile)
                    cells = []
                    for splits in sorted({s for s in (1, 2, 4, 8, 16, 32, 64, 128) if s <= num_tiles} | {default}):
                        for w in (2, 4, 8):
                            run = partial(triton_sample.sample, logits, temps, seeds, offsets)
                            us = time_us(partial(run, num_splits=splits, num_warps=w), iters)
                            cells.append((us, f"s{splits}w{w}"))
                    best = sorted(cells)[:4]
                    warps = triton_sample.NUM_WARPS
                    dflt = [f"{u:.1f}" for u, c in cells if c == f"s{default}w{warps}"]
                    print(
                        f"  t={tile} B={batch} T={temperature}: default s{default}w{warps} {dflt[0]} us; best "
                        + ", ".join(f"{c} {u:.1f}" for u, c in best)
                    )
    finally:
        triton_sample.NOISE_TILE = default_tile


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--sweep", action="store_true", help="also time split counts x num_warps")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("sample_bench needs a CUDA GPU", file=sys.stderr)
        return 1
    run_table(args.vocab, args.iters)
    if args.sweep:
        run_sweep(args.vocab, max(20, args.iters // 4))
    return 0


if __name__ == "__main__":
    sys.exit(main())
