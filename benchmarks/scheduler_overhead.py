"""Scheduler + block manager cost per step with no model: N running decodes, µs per step.

python benchmarks/scheduler_overhead.py [--steps 2000] [--block-size 16]
"""

from __future__ import annotations

import argparse
import random
import time

from nanovllm_tui.engine.sampling_params import SamplingParams
from nanovllm_tui.engine.scheduling.block_manager import BlockManager
from nanovllm_tui.engine.scheduling.scheduler import Scheduler
from nanovllm_tui.engine.scheduling.sequence import Sequence


def measure(num_seqs: int, steps: int, block_size: int, policy: str) -> tuple[float, float]:
    """Admit num_seqs 512-token prompts, then time `steps` decode steps: schedule() alone, and with token bookkeeping."""
    rng = random.Random(0)
    tokens_needed = num_seqs * (512 + steps + block_size)
    bm = BlockManager(tokens_needed // block_size + num_seqs, block_size, enable_prefix_caching=True)
    sched = Scheduler(bm, max_num_seqs=num_seqs, max_num_batched_tokens=max(8192, num_seqs * 512), policy=policy)
    sp = SamplingParams(temperature=0, max_tokens=steps + 1)
    for _ in range(num_seqs):
        sched.add(Sequence([rng.randrange(50000) for _ in range(512)], sp))

    scheduling = 0.0

    def one_step() -> int:
        nonlocal scheduling
        t0 = time.perf_counter()
        batch = sched.schedule()
        scheduling += time.perf_counter() - t0
        for seq, n in batch.items:  # what the engine does with each sampled token
            seq.num_computed_tokens += n
            seq.append_token(7)
        return len(batch.items)

    assert one_step() == num_seqs  # the prefill step
    scheduling = 0.0
    start = time.perf_counter()
    for _ in range(steps):
        one_step()
    total = time.perf_counter() - start
    return scheduling / steps * 1e6, total / steps * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--block-size", type=int, default=16)
    args = ap.parse_args()
    print(
        f"{'policy':<14}{'running decodes':>16}{'block size':>12}{'schedule µs':>13}{'+ bookkeeping µs':>18}{'target':>8}"
    )
    for policy in ("mixed", "prefill_first"):
        for n in (256, 512):
            sched_us, total_us = measure(n, args.steps, args.block_size, policy)
            target = "≤ 250" if n == 256 else ""
            print(f"{policy:<14}{n:>16}{args.block_size:>12}{sched_us:>13.1f}{total_us:>18.1f}{target:>8}")


if __name__ == "__main__":
    main()
