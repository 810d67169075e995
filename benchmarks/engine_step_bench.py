"""Engine decode-step benchmark: ms per step with and without CUDA graphs, and the host (CPU) time inside each step.

Prints one table row per (batch, mode). Columns:
  mode        graphs / eager (enforce_eager); -nocompile: RMSNorm, SiLU-and-mul, rotary not torch.compile'd;
              -async: pipelined decoding (the next step launches before this one's tokens are read back): step ms
              is the mean over consecutive steps, gpu ms the mean time blocked waiting for a step's tokens, and
              host us the rest (all the host's own work per step, overlapped with the GPU); other modes run
              synchronously; -final: requests added with stream=False (LLM.generate, `nanovllm-tui bench`)
  step ms     median wall time of LLMEngine.step() for a pure decode batch (includes waiting for the GPU)
  gpu ms      median time the host sat blocked waiting for the forward (a synchronize before sampling)
  host us     step ms - gpu ms: scheduler, input preparation, kernel/graph launches, sampling, output bookkeeping
  prepare us  median ModelRunner.prepare() time (host lists -> pinned buffers -> device)
  runner us   prepare + execute launch + sample (minus the GPU wait): the model runner's own host overhead

Run on the GPU machine:  PYTHONPATH=. python3 benchmarks/engine_step_bench.py
Smoke run on a CPU:      PYTHONPATH=. python3 benchmarks/engine_step_bench.py --device cpu --tiny --batches 1,8
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import statistics
import tempfile
import time
from typing import Any

import torch

from benchmarks.step_timing import (
    PHASES,
    check_decode,
    decode_steps,
    drain,
    fill_decoding,
    instrument,
    sync,
    time_phases,
    uninstrument,
)
from nanovllm_tui.bench.random_model import make_random_model
from nanovllm_tui.engine.llm_engine import LLMEngine

TINY: dict[str, Any] = dict(
    num_hidden_layers=2,
    hidden_size=128,
    intermediate_size=256,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    vocab_size=4096,
)


def _print_phases(phases: dict[str, float], batch: int, steps: int, host_s: float) -> None:
    split = {k: v / steps * 1e6 for k, v in phases.items()}
    # execute / sample are not called when a decode step samples inside its sampling graph
    split["launch"] -= sum(split.get(k, 0.0) for k in ("prepare", "execute", "sample"))
    split["rest"] = host_s * 1e6 - sum(v for k, v in split.items())
    print(
        f"  batch {batch} host phases (mean us/step; launch = what launch adds to prepare/execute/sample (the "
        "sampling graphs' replays, when they run), collect without the wait): "
        + "  ".join(f"{k} {v:.0f}" for k, v in split.items()),
        flush=True,
    )


def _cprofile(engine: LLMEngine, batch: int, steps: int, profile_dir: str | None) -> None:
    """Where the host's own time goes (cProfile slows Python calls, so shares, not absolutes)."""
    prof = cProfile.Profile()
    prof.runcall(decode_steps, engine, batch, steps)
    print(f"  cProfile of {steps} steps at batch {batch}:")
    pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    if profile_dir:
        prof.dump_stats(f"{profile_dir}/step-b{batch}.prof")


def bench_async(engine: LLMEngine, batch: int, args: argparse.Namespace, profile: bool, phase_split: bool) -> dict:
    """Pipelined: no per-step syncs; only the wait for each step's tokens is timed."""
    for _ in range(args.warmup):
        engine.step()
    runner = engine.model_runner
    phases = time_phases(engine) if phase_split else None  # collect's phase then excludes the wait below
    collect, waited = runner.collect, []

    def timed_collect(pending):
        t0 = time.perf_counter()
        if pending.ready is not None:
            pending.ready.synchronize()  # the GPU's time, seen from the host; collect itself is host work
        waited.append(time.perf_counter() - t0)
        return collect(pending)

    runner.collect = timed_collect
    sync(args.device)
    t = time.perf_counter()
    decode_steps(engine, batch, args.steps)
    sync(args.device)
    wall = (time.perf_counter() - t) / args.steps
    wait = sum(waited) / args.steps
    del runner.collect
    if phases is not None:
        _print_phases(phases, batch, args.steps, wall - wait)
        for obj, name in PHASES:
            if name != "collect":
                delattr(obj(engine), name)
    if profile:
        _cprofile(engine, batch, args.steps, args.profile_dir)
    nan = float("nan")
    return dict(step_ms=wall * 1e3, gpu_ms=wait * 1e3, host_us=(wall - wait) * 1e6, prepare_us=nan, runner_us=nan)


def bench_sync(engine: LLMEngine, batch: int, args: argparse.Namespace) -> dict:
    """One synchronous step at a time, its runner phases timed."""
    times = instrument(engine, args.device)
    walls = []
    for i in range(args.warmup + args.steps):
        for v in times.values():
            v.clear()
        sync(args.device)
        t = time.perf_counter()
        engine.step()
        wall = time.perf_counter() - t
        check_decode(engine, batch)
        if i >= args.warmup:  # a phase not called this step (sampling graphs) counts 0
            walls.append((wall, *(sum(times[k]) for k in ("prepare", "execute", "wait", "sample"))))
    uninstrument(engine)
    wall, prep, exe, wait, samp = (statistics.median(col) for col in zip(*walls))
    return dict(
        step_ms=wall * 1e3,
        gpu_ms=wait * 1e3,
        host_us=(wall - wait) * 1e6,
        prepare_us=prep * 1e6,
        runner_us=(prep + exe + samp) * 1e6,
    )


def bench_batch(engine: LLMEngine, batch: int, args: argparse.Namespace, mode: str) -> dict[str, float]:
    """One (batch, mode) row: fill the engine with decoding requests, time steps, abort them."""
    profile, phase_split = args.cprofile and "async" in mode, args.phases and "async" in mode
    # Early prefills start decoding while later ones still prefill: leave room so none finishes inside the window.
    prefill_steps = -(-batch * args.prompt_len // engine.config.max_num_batched_tokens) + 1
    runs = 2 if profile else 1  # the profiled steps come after the timed ones
    max_tokens = args.warmup + runs * args.steps + prefill_steps + 2
    vocab = engine.config.hf_config.vocab_size
    seqs = fill_decoding(engine, batch, args.prompt_len, max_tokens, vocab, stream="final" not in mode)
    try:
        if engine.config.async_scheduling:
            return bench_async(engine, batch, args, profile, phase_split)
        return bench_sync(engine, batch, args)
    finally:
        drain(engine, seqs)


def _parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="HF model dir (default: random Qwen3-0.6B weights)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--batches", default="1,64,256")
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument(
        "--modes",
        default="graphs-async,graphs,eager",
        help="graphs / eager, each optionally -nocompile (small ops not torch.compile'd), -async "
        "(pipelined decoding) and -final (requests not streamed)",
    )
    ap.add_argument("--cprofile", action="store_true", help="print a cProfile of each -async mode's steps")
    ap.add_argument("--phases", action="store_true", help="split each -async mode's host time by phase")
    ap.add_argument("--profile-dir", help="with --cprofile: also save each profile there (pstats files)")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer random Qwen3 (CPU smoke runs)")
    return ap.parse_args()


def _make_engine(model: str, mode: str, args: argparse.Namespace, max_batch: int) -> LLMEngine:
    kv = {} if args.device.startswith("cuda") else dict(num_kvcache_blocks=max_batch * 4)
    t = time.perf_counter()
    engine = LLMEngine(
        model,
        device=args.device,
        dtype=args.dtype,
        kvcache_block_size=args.block_size,
        max_num_seqs=max_batch,
        max_model_len=2048,
        enforce_eager=mode.startswith("eager"),
        compile_small_ops="nocompile" not in mode,
        async_scheduling="async" in mode,
        **kv,
    )
    runner = engine.model_runner
    print(
        f"[{mode}] init {time.perf_counter() - t:.1f}s, backend {runner.backend.name}, KV blocks "
        f"{runner.num_kvcache_blocks}, compiled ops {runner.compiled}, "
        f"graphs {runner.cuda_graphs.buckets if runner.cuda_graphs else None}",
        flush=True,
    )
    return engine


def main() -> None:
    args = _parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    tiny = TINY if args.tiny else {}
    model = args.model or str(make_random_model(tempfile.mkdtemp(prefix="bench-qwen3-"), device=args.device, **tiny))
    if args.device.startswith("cuda"):
        print(f"GPU: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    rows = []
    for mode in args.modes.split(","):
        engine = _make_engine(model, mode, args, max(batches))
        for b in batches:
            r = bench_batch(engine, b, args, mode)
            rows.append((b, mode, r))
            print(f"  batch {b}: {r}", flush=True)
        del engine
        gc.collect()
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    print(
        f"\nEngine decode step, {args.dtype}, block {args.block_size}, prompt {args.prompt_len} tokens, "
        f"median of {args.steps} steps"
    )
    print(f"{'batch':>5} {'mode':>16} {'step ms':>8} {'gpu ms':>7} {'host us':>8} {'prepare us':>10} {'runner us':>9}")
    for b, mode, r in sorted(rows, key=lambda x: x[0]):
        print(
            f"{b:>5} {mode:>16} {r['step_ms']:>8.3f} {r['gpu_ms']:>7.3f} {r['host_us']:>8.0f} "
            f"{r['prepare_us']:>10.0f} {r['runner_us']:>9.0f}"
        )


if __name__ == "__main__":
    main()
