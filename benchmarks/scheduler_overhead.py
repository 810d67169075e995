"""Scheduler + block manager cost per step with no model: N running decodes, µs per step.

    python benchmarks/scheduler_overhead.py [--steps 2000] [--block-size 16]
"""
from __future__ import annotations

import argparse
import random
import time

from engine.block_manager import BlockManager
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler
from engine.sequence import Sequence


def measure(num_seqs: int, steps: int, block_size: int, policy: str) -> float:
    """Admit num_seqs 512-token prompts, then time `steps` decode steps (schedule + token bookkeeping)."""
    rng = random.Random(0)
    tokens_needed = num_seqs * (512 + steps + block_size)
    bm = BlockManager(tokens_needed // block_size + num_seqs, block_size, enable_prefix_caching=True)
    sched = Scheduler(bm, max_num_seqs=num_seqs, max_num_batched_tokens=max(8192, num_seqs * 512), policy=policy)
    sp = SamplingParams(temperature=0, max_tokens=steps + 1)
    for _ in range(num_seqs):
        sched.add(Sequence([rng.randrange(50000) for _ in range(512)], sp))

    def one_step() -> int:
        batch = sched.schedule()
        for seq, n in batch.items:
            seq.num_computed_tokens += n
            seq.append_token(7)
        return len(batch.items)

    assert one_step() == num_seqs  # the prefill step
    start = time.perf_counter()
    for _ in range(steps):
        one_step()
    return (time.perf_counter() - start) / steps * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--block-size", type=int, default=16)
    args = ap.parse_args()
    print(f"{'policy':<14}{'running decodes':>16}{'block size':>12}{'µs / step':>12}{'target':>10}")
    for policy in ("mixed", "prefill_first"):
        for n in (256, 512):
            us = measure(n, args.steps, args.block_size, policy)
            target = "≤ 250" if n == 256 else ""
            print(f"{policy:<14}{n:>16}{args.block_size:>12}{us:>12.1f}{target:>10}")


if __name__ == "__main__":
    main()
