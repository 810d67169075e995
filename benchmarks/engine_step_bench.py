"""Engine decode-step benchmark: ms per step with and without CUDA graphs, and the host (CPU) time inside each step.

Prints one table row per (batch, mode). Columns:
  mode        graphs / eager (enforce_eager); -nocompile: RMSNorm, SiLU-and-mul, rotary not torch.compile'd;
              -async: pipelined decoding (the next step launches before this one's tokens are read back), so
              only step ms (mean over consecutive steps) is measured; other modes run synchronously
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
import gc
import statistics
import tempfile
import time

import torch

from benchmarks.random_model import make_random_model
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams

TINY = dict(num_hidden_layers=2, hidden_size=128, intermediate_size=256, num_attention_heads=4,
            num_key_value_heads=2, head_dim=32, vocab_size=4096)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def instrument(engine: LLMEngine, device: str) -> dict[str, list[float]]:
    """Time the runner's phases by wrapping its bound methods on this instance only (no production code changes)."""
    runner = engine.model_runner
    times: dict[str, list[float]] = {"prepare": [], "execute": [], "wait": [], "sample": []}
    prepare, execute, sample = runner.prepare, runner.execute, runner.sample_device

    def timed_prepare(items):
        t = time.perf_counter()
        out = prepare(items)
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


def bench_batch(engine: LLMEngine, batch: int, prompt_len: int, steps: int, warmup: int, device: str,
                vocab: int) -> dict[str, float]:
    gen = torch.Generator().manual_seed(batch)
    # Early prefills start decoding while later ones still prefill: leave room so none finishes inside the window.
    prefill_steps = -(-batch * prompt_len // engine.config.max_num_batched_tokens) + 1
    sp = SamplingParams(temperature=0, max_tokens=warmup + steps + prefill_steps + 2, ignore_eos=True)
    seqs = []
    for _ in range(batch):
        seqs.append(engine.add_request(torch.randint(0, vocab, (prompt_len,), generator=gen).tolist(), sp, detokenize=False))
    while any(s.num_computed_tokens < s.num_prompt_tokens for s in engine.scheduler.running) or engine.scheduler.waiting:
        for out in engine.step():  # prefills (and the first decodes of early finishers)
            if out.error:
                print(getattr(engine, "last_traceback", ""))
                raise RuntimeError(f"request {out.request_id} failed: {out.error}")
    if engine.config.async_scheduling:  # pipelined: no per-step syncs or wrappers; wall time per step only
        for _ in range(warmup):
            engine.step()
        _sync(device)
        t = time.perf_counter()
        for _ in range(steps):
            engine.step()
            last = engine.last_step
            assert last.num_decode_tokens == batch and last.num_prefill_tokens == 0, f"not a pure decode step: {last}"
        _sync(device)
        wall = (time.perf_counter() - t) / steps
        for seq in seqs:
            engine.abort_request(seq.request_id)
        while engine.has_unfinished_requests():
            engine.step()
        nan = float("nan")
        return dict(step_ms=wall * 1e3, gpu_ms=nan, host_us=nan, prepare_us=nan, runner_us=nan)
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
    return dict(step_ms=wall * 1e3, gpu_ms=wait * 1e3, host_us=(wall - wait) * 1e6, prepare_us=prep * 1e6,
                runner_us=(prep + exe + samp) * 1e6)


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
    ap.add_argument("--modes", default="graphs-async,graphs,eager",
                    help="graphs / eager, each optionally -nocompile (small ops not torch.compile'd) and -async "
                         "(pipelined decoding: only step ms, the mean over consecutive steps)")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer random Qwen3 (CPU smoke runs)")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    model = args.model or str(make_random_model(tempfile.mkdtemp(prefix="bench-qwen3-"), seed=0,
                                                device=args.device, **(TINY if args.tiny else {})))
    if args.device.startswith("cuda"):
        print(f"GPU: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    rows = []
    for mode in args.modes.split(","):
        kv = {} if args.device.startswith("cuda") else dict(num_kvcache_blocks=max(batches) * 4)
        t = time.perf_counter()
        engine = LLMEngine(model, device=args.device, dtype=args.dtype, kvcache_block_size=args.block_size,
                           max_num_seqs=max(batches), max_model_len=2048, enforce_eager=mode.startswith("eager"),
                           compile_small_ops="nocompile" not in mode, async_scheduling="async" in mode, **kv)
        init_s = time.perf_counter() - t
        runner = engine.model_runner
        print(f"[{mode}] init {init_s:.1f}s, backend {runner.backend.name}, KV blocks {runner.num_kvcache_blocks}, "
              f"compiled ops {runner.compiled}, graphs {runner.cuda_graphs.buckets if runner.cuda_graphs else None}", flush=True)
        vocab = engine.config.hf_config.vocab_size
        for b in batches:
            r = bench_batch(engine, b, args.prompt_len, args.steps, args.warmup, args.device, vocab)
            rows.append((b, mode, r))
            print(f"  batch {b}: {r}", flush=True)
        del engine, runner
        gc.collect()
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    print(f"\nEngine decode step, {args.dtype}, block {args.block_size}, prompt {args.prompt_len} tokens, "
          f"median of {args.steps} steps")
    print(f"{'batch':>5} {'mode':>16} {'step ms':>8} {'gpu ms':>7} {'host us':>8} {'prepare us':>10} {'runner us':>9}")
    for b, mode, r in sorted(rows, key=lambda x: x[0]):
        print(f"{b:>5} {mode:>16} {r['step_ms']:>8.3f} {r['gpu_ms']:>7.3f} {r['host_us']:>8.0f} "
              f"{r['prepare_us']:>10.0f} {r['runner_us']:>9.0f}")


if __name__ == "__main__":
    main()
