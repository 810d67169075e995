"""Engine throughput with the app attached vs headless, same engine, same workload shape.

    python scripts/bench_app_overhead.py [--model DIR] [--requests 16] [--prompt-len 64] [--output-len 64] [--rounds 2]

Headless: a BenchRun polled by a plain loop. App: the same BenchRun started from the real app (run_test at
160x50, benchmark screen open, so the dashboard beside it redraws at 12 Hz). Each run uses fresh random
prompts (a new seed) so the prefix cache favours no run; rounds alternate the order. Prints a table.
"""
from __future__ import annotations

import argparse
import asyncio
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from engine import LLM  # noqa: E402
from engine.demo_model import ensure_demo_model  # noqa: E402
from engine.service import EngineService  # noqa: E402
from nanovllm_tui.app import NanoVllmApp  # noqa: E402
from nanovllm_tui.bench_run import BenchRun, WorkloadSpec  # noqa: E402
from nanovllm_tui.stats_window import EngineInfo  # noqa: E402


def headless(service, spec: WorkloadSpec) -> float:
    run = BenchRun(service, spec)
    run.start()
    run.wait()
    return run.result().throughput


def with_app(service, info: EngineInfo, spec: WorkloadSpec) -> float:
    async def go() -> float:
        app = NanoVllmApp(service, info)
        async with app.run_test(size=(160, 50)) as pilot:
            await pilot.press("f5")
            await pilot.pause(0.2)
            app.start_benchmark(spec)
            run = app.bench_run
            while run.end_time is None:
                await pilot.pause(0.1)
            return run.result().throughput
    return asyncio.run(go())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model")
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    model = args.model or str(ensure_demo_model())
    llm = LLM(model, kvcache_block_size=16, max_model_len=1024, num_kvcache_blocks=1024)
    service = EngineService(llm)
    info = EngineInfo.from_llm(llm, pathlib.Path(model).name)
    seed = iter(range(1, 1000))

    def spec() -> WorkloadSpec:
        return WorkloadSpec(args.requests, (args.prompt_len,) * 2, (args.output_len,) * 2, seed=next(seed))

    headless(service, WorkloadSpec(2, (16, 16), (4, 4), seed=0))  # warm-up
    rows = []
    for r in range(args.rounds):
        order = ("headless", "app") if r % 2 == 0 else ("app", "headless")
        for mode in order:
            t = time.monotonic()
            tps = headless(service, spec()) if mode == "headless" else with_app(service, info, spec())
            rows.append((r, mode, tps, time.monotonic() - t))
    service.shutdown()
    print(f"\nmodel {pathlib.Path(model).name}, {args.requests} requests x ({args.prompt_len} prompt, "
          f"{args.output_len} output) tokens, all at once")
    print(f"{'round':>5} {'mode':>9} {'output tok/s':>13} {'wall s':>8}")
    for r, mode, tps, wall in rows:
        print(f"{r:>5} {mode:>9} {tps:>13.1f} {wall:>8.1f}")
    mean = {m: sum(x[2] for x in rows if x[1] == m) / args.rounds for m in ("headless", "app")}
    print(f"mean: headless {mean['headless']:.1f} tok/s, app {mean['app']:.1f} tok/s, "
          f"ratio app/headless {mean['app'] / mean['headless']:.3f}")


if __name__ == "__main__":
    main()
