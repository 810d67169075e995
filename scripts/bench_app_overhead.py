"""Engine throughput with the app attached vs headless, same engine, same workload shape.

    python scripts/bench_app_overhead.py [--model DIR] [--engine process|thread|both] [--torch-threads N]
                                         [--requests 16] [--prompt-len 64] [--output-len 64] [--rounds 2]

Engines: "process" is the app's default (ProcessEngineService: the engine in its own process), "thread" the
in-process EngineService (--engine-thread). Each engine serves both of its modes, so headless and attached
runs use the same engine settings: the same torch thread count in the engine (--torch-threads, default as
the CLI: torch's default less one core for the UI) and the block map on (the dashboard asks for it).
Headless: a BenchRun polled by a plain loop. App: the same BenchRun started from the real app (run_test at
160x50, benchmark screen open, so the dashboard beside it redraws at 12 Hz). Each run uses fresh random
prompts (a new seed) so the prefix cache favours no run; rounds alternate the order. Prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import pathlib
import sys
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import torch

from nanovllm_tui.app.app import NanoVllmApp
from nanovllm_tui.app.engine_args import default_torch_threads
from nanovllm_tui.bench.driver import BenchRun, WorkloadSpec
from nanovllm_tui.engine import LLM
from nanovllm_tui.engine.demo_model import ensure_demo_model
from nanovllm_tui.engine.serving.process_service import ProcessEngineService
from nanovllm_tui.engine.serving.protocol import EngineInfo
from nanovllm_tui.engine.serving.thread_service import EngineService

ENGINE_OPTIONS: dict[str, Any] = dict(kvcache_block_size=16, max_model_len=1024, num_kvcache_blocks=1024)


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
            if run is None:
                raise RuntimeError("the benchmark did not start")
            while run.end_time is None:
                await pilot.pause(0.1)
            return run.result().throughput

    return asyncio.run(go())


def busy_cpu() -> tuple[float, float]:
    """(CPU seconds used by every process on the machine, by this process and its children): the difference
    is other people's load, reported per run because this box is shared."""
    import psutil

    t = psutil.cpu_times()
    total = t.user + t.system + getattr(t, "nice", 0.0) + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
    me = psutil.Process()
    ours = 0.0
    for p in [me, *me.children(recursive=True)]:
        try:
            c = p.cpu_times()
            ours += c.user + c.system
        except psutil.Error:
            pass
    return total, ours


def make_service(engine: str, model: str, threads: int):
    if engine == "process":
        return ProcessEngineService(model, torch_threads=threads, **ENGINE_OPTIONS)
    torch.set_num_threads(threads)  # this process's engine thread; the process engine sets its own
    return EngineService(LLM(model, **ENGINE_OPTIONS))


def measure(engine: str, model: str, args: argparse.Namespace, seed) -> list[tuple]:
    """Rounds of (headless, app) runs on one engine; rows of (engine, round, mode, tok/s, wall s, others' cores)."""
    service = make_service(engine, model, args.torch_threads)
    info = dataclasses.replace(service.engine_info(), model=pathlib.Path(model).name)

    def spec() -> WorkloadSpec:
        return WorkloadSpec(args.requests, (args.prompt_len,) * 2, (args.output_len,) * 2, seed=next(seed))

    rows = []
    try:
        service.set_block_map(True)  # the app turns it on; headless runs pay for it too
        headless(service, WorkloadSpec(2, (16, 16), (4, 4), seed=0))  # warm-up
        for r in range(args.rounds):
            order = ("headless", "app") if r % 2 == 0 else ("app", "headless")
            for mode in order:
                t, (total, ours) = time.monotonic(), busy_cpu()
                tps = headless(service, spec()) if mode == "headless" else with_app(service, info, spec())
                wall, (total2, ours2) = time.monotonic() - t, busy_cpu()
                rows.append((engine, r, mode, tps, wall, ((total2 - total) - (ours2 - ours)) / wall))
    finally:
        service.shutdown()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model")
    p.add_argument("--engine", choices=("process", "thread", "both"), default="both")
    p.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch threads of the engine in every run (default: the CLI's default)",
    )
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    args.torch_threads = args.torch_threads or default_torch_threads()
    model = args.model or str(ensure_demo_model())
    engines = ("process", "thread") if args.engine == "both" else (args.engine,)
    seed = iter(range(1, 1000))
    rows = [row for engine in engines for row in measure(engine, model, args, seed)]
    print(
        f"\nmodel {pathlib.Path(model).name}, {args.requests} requests x ({args.prompt_len} prompt, "
        f"{args.output_len} output) tokens, all at once; engine torch threads {args.torch_threads}"
    )
    print(f"{'engine':>8} {'round':>5} {'mode':>9} {'output tok/s':>13} {'wall s':>8} {'other load':>10}")
    for engine, r, mode, tps, wall, others in rows:
        print(f"{engine:>8} {r:>5} {mode:>9} {tps:>13.1f} {wall:>8.1f} {others:>10.2f}")
    print("(other load: CPU cores used by processes outside this benchmark during the run)")
    for engine in engines:
        tps = {(r, m): x for e, r, m, x, *_ in rows if e == engine}
        per_round = [tps[(r, "app")] / tps[(r, "headless")] for r in range(args.rounds)]
        mean = {m: sum(tps[(r, m)] for r in range(args.rounds)) / args.rounds for m in ("headless", "app")}
        print(
            f"{engine}: headless {mean['headless']:.1f} tok/s, app {mean['app']:.1f} tok/s, "
            f"ratio app/headless {mean['app'] / mean['headless']:.3f} "
            f"(per round {', '.join(f'{x:.3f}' for x in per_round)})"
        )


if __name__ == "__main__":
    main()
