"""Host cost of one LLMEngine.step() with N running decodes and no forward: scheduler, input building (real
InputBuilder, CPU tensors), token processing and stats, µs per step. The forward is replaced by a stub that
returns a fixed token, so this is the CPU work a GPU step has to hide (pipelined decoding) or wait for.

    PYTHONPATH=. python benchmarks/host_step_bench.py [--seqs 1,64,256] [--steps 300] [--profile]
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time

import torch

from engine.demo_model import ensure_demo_model
from engine.input_builder import InputBuilder
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams


class _NoForwardRunner:
    """The model runner's launch/collect contract with real input building and no model."""

    device = torch.device("cpu")

    def __init__(self, num_blocks: int, block_size: int):
        self.num_kvcache_blocks = num_blocks
        self.builder = InputBuilder(self.device, block_size)

    def launch(self, items, after=None, keep=None) -> list[int | None]:
        self.builder.build(items)
        return [7 if s.num_computed_tokens + n == s.num_tokens else None for s, n in items]

    def collect(self, tokens: list[int | None]) -> list[int | None]:
        return tokens

    def memory_bytes(self) -> int:
        return 0


class _HostOnlyEngine(LLMEngine):
    def _make_runner(self, config):
        return _NoForwardRunner(config.num_kvcache_blocks, config.kvcache_block_size)


def measure(model: str, num_seqs: int, steps: int, profile: bool) -> float:
    engine = _HostOnlyEngine(model, kvcache_block_size=256, num_kvcache_blocks=num_seqs * 8 + 8,
                             max_num_seqs=num_seqs, max_model_len=4096, max_num_batched_tokens=8192)
    sp = SamplingParams(temperature=0.6, max_tokens=3000, ignore_eos=True)
    for i in range(num_seqs):
        engine.add_request(list(range(100, 600 + i)), sp, detokenize=False)
    while engine.scheduler.waiting or engine.last_step is None or engine.last_step.num_prefill_tokens:
        engine.step()
    for _ in range(20):
        engine.step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - t)
    if profile:
        prof = cProfile.Profile()
        prof.runcall(lambda: [engine.step() for _ in range(100)])
        pstats.Stats(prof).sort_stats("tottime").print_stats(12)
    return statistics.median(times) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model dir for config + tokenizer (default: the demo model)")
    ap.add_argument("--seqs", default="1,64,256")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--profile", action="store_true", help="print a cProfile of the largest size")
    args = ap.parse_args()
    model = args.model or str(ensure_demo_model())
    sizes = [int(s) for s in args.seqs.split(",")]
    print(f"{'decodes':>8} {'host us/step':>13}")
    for n in sizes:
        us = measure(model, n, args.steps, args.profile and n == max(sizes))
        print(f"{n:>8} {us:>13.0f}", flush=True)


if __name__ == "__main__":
    main()
