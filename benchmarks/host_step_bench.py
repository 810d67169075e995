"""Host cost of one LLMEngine.step() with N running decodes and no forward: scheduler, input building (real
InputBuilder, CPU tensors), token processing and stats, µs per step. The forward is replaced by a stub that
returns a fixed token, so this is the CPU work a GPU step has to hide (pipelined decoding) or wait for.
Steps are pipelined as on a GPU (the next decode step is scheduled and built before this one's tokens are
processed) unless --sync; --phases splits the time by phase. Two columns: requests streamed (an output per
token, as the service asks, here without detokenizing) and final-only (LLM.generate and `nanovllm-tui bench`).

    PYTHONPATH=. python benchmarks/host_step_bench.py [--seqs 1,64,256] [--steps 300] [--sync] [--phases] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time

import torch

from nanovllm_tui.engine.demo_model import ensure_demo_model
from nanovllm_tui.engine.execution.input_builder import InputBuilder
from nanovllm_tui.engine.llm_engine import LLMEngine
from nanovllm_tui.engine.sampling_params import SamplingParams


class _NoForwardRunner:
    """The model runner's launch/collect contract with real input building and no model."""

    device = torch.device("cpu")

    def __init__(self, num_blocks: int, block_size: int):
        self.num_kvcache_blocks = num_blocks
        self.builder = InputBuilder(self.device, block_size)

    def launch(self, items, after=None, keep=None) -> list[int | None]:
        self.builder.build(items, None, ahead=after is not None)
        if after is not None and len(after) == len(items):  # as on a GPU: one sampled token per decode row
            return after
        return [7 if s.num_computed_tokens + n == s.num_tokens else None for s, n in items]

    def collect(self, tokens: list[int | None]) -> list[int | None]:
        return tokens

    def memory_bytes(self) -> int:
        return 0


class _HostOnlyEngine(LLMEngine):
    def _make_runner(self, config):
        return _NoForwardRunner(config.num_kvcache_blocks, config.kvcache_block_size)


def _time_phases(engine: LLMEngine) -> dict[str, float]:
    """Wrap the step's phases on this engine instance; the returned dict accumulates seconds per phase."""
    acc: dict[str, float] = {}
    clock = time.perf_counter

    def wrap(obj, name: str, key: str) -> None:
        f = getattr(obj, name)

        def timed(*args, **kwargs):
            t = clock()
            out = f(*args, **kwargs)
            acc[key] = acc.get(key, 0.0) + clock() - t
            return out

        setattr(obj, name, timed)

    wrap(engine.scheduler, "schedule", "schedule")
    wrap(engine.scheduler, "schedule_ahead", "schedule_ahead")
    wrap(engine.scheduler, "commit_ahead", "commit_ahead")
    wrap(engine.model_runner.builder, "build", "build")
    wrap(engine, "_process", "process")
    wrap(engine, "_record", "record")
    return acc


def measure(
    model: str,
    num_seqs: int,
    steps: int,
    profile: bool,
    pipelined: bool = True,
    phases: bool = False,
    stream: bool = True,
) -> float:
    engine = _HostOnlyEngine(
        model,
        kvcache_block_size=256,
        num_kvcache_blocks=num_seqs * 8 + 8,
        max_num_seqs=num_seqs,
        max_model_len=4096,
        max_num_batched_tokens=8192,
        async_scheduling=pipelined,
    )
    sp = SamplingParams(temperature=0.6, max_tokens=3000, ignore_eos=True)
    for i in range(num_seqs):
        engine.add_request(list(range(100, 600 + i)), sp, detokenize=False, stream=stream)
    while engine.scheduler.waiting or engine.last_step is None or engine.last_step.num_prefill_tokens:
        engine.step()
    for _ in range(20):
        engine.step()
    acc = _time_phases(engine) if phases else {}
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - t)
    if phases:
        total = sum(times)
        split = {k: v / steps * 1e6 for k, v in acc.items()}
        split["rest"] = (total - sum(acc.values())) / steps * 1e6
        print(
            f"{num_seqs:>8} {'streamed' if stream else 'final-only'} phases (mean us/step, timer overhead included): "
            + "  ".join(f"{k} {v:.0f}" for k, v in split.items()),
            flush=True,
        )
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
    ap.add_argument("--sync", action="store_true", help="synchronous steps (as on CPU) instead of pipelined")
    ap.add_argument("--phases", action="store_true", help="print the time per phase of each size")
    args = ap.parse_args()
    model = args.model or str(ensure_demo_model())
    sizes = [int(s) for s in args.seqs.split(",")]
    print(f"{'decodes':>8} {'streamed us/step':>17} {'final-only us/step':>19}")
    for n in sizes:
        us = [
            measure(
                model, n, args.steps, args.profile and n == max(sizes) and stream, not args.sync, args.phases, stream
            )
            for stream in (True, False)
        ]
        print(f"{n:>8} {us[0]:>17.0f} {us[1]:>19.0f}", flush=True)


if __name__ == "__main__":
    main()
