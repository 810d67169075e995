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

import torch

from nanovllm_tui.bench.random_model import make_random_model
from nanovllm_tui.engine.llm_engine import LLMEngine
from nanovllm_tui.engine.sampling_params import SamplingParams

TINY = dict(
    num_hidden_layers=2,
    hidden_size=128,
    intermediate_size=256,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    vocab_size=4096,
)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def instrument(engine: LLMEngine, device: str) -> dict[str, list[float]]:
    """Time the runner's phases by wrapping its bound methods on this instance only (no production code changes)."""
    runner = engine.model_runner
    times: dict[str, list[float]] = {"prepare": [], "execute": [], "wait": [], "sample": []}
    prepare, execute, sample = runner.prepare, runner.execute, runner.sample_device

    def timed_prepare(items, ahead=False):
        t = time.perf_counter()
        out = prepare(items, ahead)
        times["prepare"].append(time.perf_counter() - t)
        return out

    def timed_execute(inputs):
        t = time.perf_counter()
        out = execute(inputs)
        times["execute"].append(time.perf_counter() - t)
        return out

    def timed_sample(logits, inputs):
        t = time.perf_counter()
        _sync(device)  # the forward's GPU time, seen from the host
        t1 = time.perf_counter()
        out = sample(logits, inputs)
        _sync(device)
        times["wait"].append(t1 - t)
        times["sample"].append(time.perf_counter() - t1)
        return out

    runner.prepare, runner.execute, runner.sample_device = timed_prepare, timed_execute, timed_sample
    return times


_PHASES = (
    (lambda e: e.scheduler, "schedule_ahead"),
    (lambda e: e.scheduler, "commit_ahead"),
    (lambda e: e.model_runner, "launch"),
    (lambda e: e.model_runner, "prepare"),
    (lambda e: e.model_runner, "execute"),
    (lambda e: e.model_runner, "sample_device"),
    (lambda e: e.model_runner, "collect"),
    (lambda e: e, "_process"),
    (lambda e: e, "_record"),
)


def _time_phases(engine: LLMEngine) -> dict[str, float]:
    """Wrap the pipelined step's phases on this engine's instances; the dict accumulates seconds per phase."""
    acc: dict[str, float] = {}
    clock = time.perf_counter
    for get, name in _PHASES:
        obj = get(engine)
        f = getattr(obj, name)
        key = {"sample_device": "sample", "_process": "process", "_record": "record"}.get(name, name)

        def timed(*args, _f=f, _key=key, **kwargs):
            t0 = clock()
            out = _f(*args, **kwargs)
            acc[_key] = acc.get(_key, 0.0) + clock() - t0
            return out

        setattr(obj, name, timed)
    return acc


def bench_batch(
    engine: LLMEngine,
    batch: int,
    prompt_len: int,
    steps: int,
    warmup: int,
    device: str,
    vocab: int,
    stream: bool = True,
    profile: bool = False,
    profile_dir: str | None = None,
    phase_split: bool = False,
) -> dict[str, float]:
    gen = torch.Generator().manual_seed(batch)
    # Early prefills start decoding while later ones still prefill: leave room so none finishes inside the window.
    prefill_steps = -(-batch * prompt_len // engine.config.max_num_batched_tokens) + 1
    runs = 2 if profile else 1  # the profiled steps come after the timed ones
    sp = SamplingParams(temperature=0, max_tokens=warmup + runs * steps + prefill_steps + 2, ignore_eos=True)
    seqs = []
    for _ in range(batch):
        seqs.append(
            engine.add_request(
                torch.randint(0, vocab, (prompt_len,), generator=gen).tolist(),
                sp,
                detokenize=False,
                **({} if stream else {"stream": False}),
            )
        )
    while (
        any(s.num_computed_tokens < s.num_prompt_tokens for s in engine.scheduler.running) or engine.scheduler.waiting
    ):
        for out in engine.step():  # prefills (and the first decodes of early finishers)
            if out.error:
                print(getattr(engine, "last_traceback", ""))
                raise RuntimeError(f"request {out.request_id} failed: {out.error}")
    if engine.config.async_scheduling:  # pipelined: no per-step syncs; only the wait for each step's tokens is timed
        for _ in range(warmup):
            engine.step()
        runner = engine.model_runner
        phases = _time_phases(engine) if phase_split else None  # collect's phase then excludes the wait below
        collect, waited = runner.collect, []

        def timed_collect(pending):
            t0 = time.perf_counter()
            if pending.ready is not None:
                pending.ready.synchronize()  # the GPU's time, seen from the host; collect itself is host work
            waited.append(time.perf_counter() - t0)
            return collect(pending)

        runner.collect = timed_collect
        _sync(device)
        t = time.perf_counter()
        for _ in range(steps):
            engine.step()
            last = engine.last_step
            assert last.num_decode_tokens == batch and last.num_prefill_tokens == 0, f"not a pure decode step: {last}"
        _sync(device)
        wall = (time.perf_counter() - t) / steps
        wait = sum(waited) / steps
        if phases is not None:
            split = {k: v / steps * 1e6 for k, v in phases.items()}
            # execute / sample are not called when a decode step samples inside its sampling graph
            split["launch"] -= sum(split.get(k, 0.0) for k in ("prepare", "execute", "sample"))
            split["rest"] = (wall - wait) * 1e6 - sum(v for k, v in split.items())
            print(
                f"  batch {batch} host phases (mean us/step; launch = what launch adds to prepare/execute/sample (the "
                "sampling graphs' replays, when they run), "
                "collect without the wait): " + "  ".join(f"{k} {v:.0f}" for k, v in split.items()),
                flush=True,
            )
        del runner.collect
        if phases is not None:
            for obj, name in _PHASES:
                if name != "collect":
                    delattr(obj(engine), name)
        if profile:  # where the host's own time goes (cProfile slows Python calls, so shares, not absolutes)
            prof = cProfile.Profile()
            prof.runcall(lambda: [engine.step() for _ in range(steps)])
            print(f"  cProfile of {steps} steps at batch {batch}:")
            pstats.Stats(prof).sort_stats("tottime").print_stats(25)
            if profile_dir:
                prof.dump_stats(f"{profile_dir}/step-b{batch}.prof")
        for seq in seqs:
            engine.abort_request(seq.request_id)
        while engine.has_unfinished_requests():
            engine.step()
        nan = float("nan")
        return dict(step_ms=wall * 1e3, gpu_ms=wait * 1e3, host_us=(wall - wait) * 1e6, prepare_us=nan, runner_us=nan)
    times = instrument(engine, device)
    walls = []
    for i in range(warmup + steps):
        for v in times.values():
            v.clear()
        _sync(device)
        t = time.perf_counter()
        engine.step()
        wall = time.perf_counter() - t
        last = engine.last_step
        assert last.num_decode_tokens == batch and last.num_prefill_tokens == 0, f"not a pure decode step: {last}"
        if i >= warmup:
            walls.append((wall, times["prepare"][0], times["execute"][0], times["wait"][0], times["sample"][0]))
    for seq in seqs:
        engine.abort_request(seq.request_id)
    while engine.has_unfinished_requests():
        engine.step()
    del engine.model_runner.prepare, engine.model_runner.execute, engine.model_runner.sample_device
    med = [statistics.median(col) for col in zip(*walls)]
    wall, prep, exe, wait, samp = med
    return dict(
        step_ms=wall * 1e3,
        gpu_ms=wait * 1e3,
        host_us=(wall - wait) * 1e6,
        prepare_us=prep * 1e6,
        runner_us=(prep + exe + samp) * 1e6,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="HF model dir (default: random Qwen3-0.6B weights from benchmarks/configs)")
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
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    model = args.model or str(
        make_random_model(
            tempfile.mkdtemp(prefix="bench-qwen3-"), seed=0, device=args.device, **(TINY if args.tiny else {})
        )
    )
    if args.device.startswith("cuda"):
        print(f"GPU: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    rows = []
    for mode in args.modes.split(","):
        kv = {} if args.device.startswith("cuda") else dict(num_kvcache_blocks=max(batches) * 4)
        t = time.perf_counter()
        engine = LLMEngine(
            model,
            device=args.device,
            dtype=args.dtype,
            kvcache_block_size=args.block_size,
            max_num_seqs=max(batches),
            max_model_len=2048,
            enforce_eager=mode.startswith("eager"),
            compile_small_ops="nocompile" not in mode,
            async_scheduling="async" in mode,
            **kv,
        )
        init_s = time.perf_counter() - t
        runner = engine.model_runner
        print(
            f"[{mode}] init {init_s:.1f}s, backend {runner.backend.name}, KV blocks {runner.num_kvcache_blocks}, "
            f"compiled ops {runner.compiled}, graphs {runner.cuda_graphs.buckets if runner.cuda_graphs else None}",
            flush=True,
        )
        vocab = engine.config.hf_config.vocab_size
        for b in batches:
            r = bench_batch(
                engine,
                b,
                args.prompt_len,
                args.steps,
                args.warmup,
                args.device,
                vocab,
                stream="final" not in mode,
                profile=args.cprofile and "async" in mode,
                profile_dir=args.profile_dir,
                phase_split=args.phases and "async" in mode,
            )
            rows.append((b, mode, r))
            print(f"  batch {b}: {r}", flush=True)
        del engine, runner
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
