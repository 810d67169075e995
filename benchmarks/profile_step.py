"""Where a step's time goes: torch.profiler over real engine steps (pure decode, then prefill+decode mixed).

Prints, per phase, the wall time per step, the GPU kernel time per step, and the top kernels and host
ops by time, so RESULTS.md can say where the time goes instead of guessing.

    PYTHONPATH=. python3 benchmarks/profile_step.py [--batch 256] [--prompt-len 768] [--steps 20]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from nanovllm_tui.bench.random_model import make_random_model
from nanovllm_tui.engine.llm_engine import LLMEngine
from nanovllm_tui.engine.sampling_params import SamplingParams


def _table(prof, key: str, n: int, steps: int) -> None:
    # Device time: kernels only (an aten op's own row repeats its kernels' time); host time: every op.
    rows = [
        e
        for e in prof.key_averages()
        if getattr(e, key) > 0 and ("device" not in key or e.device_type == DeviceType.CUDA)
    ]
    rows.sort(key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in rows)
    label = "device" if "device" in key else "host"
    print(f"  top {n} by {label} time (us per step; total {total / steps:.0f} us per step over all ops)")
    for e in rows[:n]:
        print(f"    {getattr(e, key) / steps:9.1f}  x{e.count / steps:6.1f}  {e.key[:110]}")


def _kernel_us(prof, steps: int) -> float:
    """Summed device time of nanovllm_tui/kernels/memcpys (self time, so nothing is counted twice)."""
    return sum(e.self_device_time_total for e in prof.key_averages() if e.device_type == DeviceType.CUDA) / steps


def _profile(engine: LLMEngine, steps: int, label: str, check) -> None:
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t = time.perf_counter()
        for _ in range(steps):
            engine.step()
            check(engine.last_step)
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t) / steps * 1e6
    kernels = _kernel_us(prof, steps)
    print(
        f"\n== {label}: {steps} steps, wall {wall / 1e3:.3f} ms per step (under the profiler), kernel time "
        f"{kernels / 1e3:.3f} ms per step, GPU idle {max(wall - kernels, 0):.0f} us per step"
    )
    _table(prof, "self_device_time_total", 25, steps)
    _table(prof, "self_cpu_time_total", 25, steps)


def _wall(engine: LLMEngine, steps: int, check) -> float:
    """Mean wall time per step over consecutive steps (no syncs in between: pipelined steps stay pipelined)."""
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        engine.step()
        check(engine.last_step)
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / steps


def _parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--prompt-len", type=int, default=768)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--temperature", type=float, default=0.6)
    ap.add_argument("--enforce-eager", action="store_true")
    ap.add_argument("--sync", action="store_true", help="no pipelined decoding (async_scheduling=False)")
    return ap.parse_args()


def main() -> None:
    args = _parse_args()
    model = args.model or str(make_random_model(tempfile.mkdtemp(prefix="prof-qwen3-"), seed=0, device="cuda"))
    engine = LLMEngine(
        model,
        dtype="bf16",
        kvcache_block_size=256,
        max_num_seqs=args.batch,
        max_model_len=4096,
        enforce_eager=args.enforce_eager,
        async_scheduling=not args.sync,
    )
    vocab = engine.config.hf_config.vocab_size
    gen = torch.Generator().manual_seed(0)
    sp = SamplingParams(temperature=args.temperature, max_tokens=1000, ignore_eos=True)

    def prompt() -> list[int]:
        return torch.randint(0, min(vocab, 10000), (args.prompt_len,), generator=gen).tolist()

    for _ in range(args.batch):
        engine.add_request(prompt(), sp, detokenize=False)
    while engine.scheduler.waiting or any(
        s.num_computed_tokens < s.num_prompt_tokens for s in engine.scheduler.running
    ):
        engine.step()

    def is_decode(s) -> None:
        assert s.num_prefill_tokens == 0 and s.num_decode_tokens == args.batch, s

    for _ in range(5):
        engine.step()
    print(
        f"GPU {torch.cuda.get_device_name()}, batch {args.batch}, context ~{args.prompt_len}, "
        f"temperature {args.temperature}, graphs {engine.model_runner.cuda_graphs is not None}"
    )
    print(
        f"pure decode: wall {_wall(engine, args.steps, is_decode) * 1e3:.3f} ms per step (no profiler), "
        f"pipelined {engine.config.async_scheduling}"
    )
    _profile(engine, args.steps, "pure decode", is_decode)

    # Mixed steps: half the batch finishes, new prompts arrive and prefill beside the remaining decodes.
    running = list(engine.scheduler.running)
    for seq in running[: args.batch // 2]:
        engine.abort_request(seq.request_id)
    engine.step()
    for _ in range(args.batch // 2):
        engine.add_request(prompt(), sp, detokenize=False)
    engine.step()  # returns the decode step still in flight (pipelined), if any

    def is_mixed(s) -> None:
        assert s.num_prefill_tokens > 0, s

    _profile(engine, 3, "mixed prefill+decode", is_mixed)


if __name__ == "__main__":
    main()
