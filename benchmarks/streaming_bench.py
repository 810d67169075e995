"""What streaming costs: N concurrent streaming requests through EngineService vs the same through LLM.generate.

Same engine, same greedy requests (ignore_eos, fixed length, prefix caching off so both compute the same),
rounds interleaved (generate, streaming, generate, ...) so machine noise hits both. Prints a table:
throughput (generated tokens / wall time), TTFT and inter-token latency p50/p99.
TTFT/ITL are measured where each side observes tokens: for generate from the engine's per-token
timestamps (arrival = add_request), for streaming in the client threads (arrival = submit(), token =
when the reader thread received the delta), so streaming's numbers include the hand-off to the reader.

    python benchmarks/streaming_bench.py                 # SmolLM2-135M demo model on CPU
    python benchmarks/streaming_bench.py --model DIR --device cuda --max-tokens 128
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import threading
import time

import torch

from nanovllm_tui.bench.driver import LoadDriver
from nanovllm_tui.bench.results import percentile
from nanovllm_tui.bench.workload import BenchRequest
from nanovllm_tui.engine import LLM, SamplingParams
from nanovllm_tui.engine.serving.thread_service import EngineService

TOPICS = [
    "the sea",
    "a lighthouse",
    "mountains",
    "a robot",
    "coffee",
    "winter",
    "a library",
    "trains",
    "the moon",
    "a garden",
    "bees",
    "a city at night",
    "rain",
    "a violin",
    "deserts",
    "an old map",
]


class RecordingLLM(LLM):
    """LLM that keeps its Sequences, so generate's per-token timestamps can be read after it returns."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.recorded = []

    def add_request(self, *args, **kwargs):
        seq = super().add_request(*args, **kwargs)
        self.recorded.append(seq)
        return seq


def prompts(n: int) -> list[str]:
    return [f"Request {i}: write a short story about {TOPICS[i % len(TOPICS)]}." for i in range(n)]


def run_generate(llm: RecordingLLM, ps: list[str], sp: SamplingParams) -> dict:
    llm.recorded.clear()
    start = time.monotonic()
    outs = llm.generate(ps, sp, use_tqdm=False)
    wall = time.monotonic() - start
    ttft = [s.first_token_time - s.arrival_time for s in llm.recorded]
    itl = [b - a for s in llm.recorded for a, b in zip(s.token_times, s.token_times[1:])]
    return dict(tokens=sum(len(o["token_ids"]) for o in outs), wall=wall, ttft=ttft, itl=itl)


def run_streaming(llm: RecordingLLM, ps: list[str], sp: SamplingParams, readers: str = "threads") -> dict:
    """The same requests through the streaming service, all at once, driven by the bench's LoadDriver.

    readers="threads": one blocking reader thread per request; "poll": one thread drain()s all every 5 ms;
    "none": nobody reads until the end (the engine thread's own cost; TTFT/ITL from the handles' metrics)."""
    svc = EngineService(llm)
    requests = [BenchRequest(tuple(llm.tokenize(p)), sp.max_tokens) for p in ps]
    received: list[list[float]] = [[] for _ in ps]
    counts = [0] * len(ps)
    threads: list[threading.Thread] = []

    def record(i: int, outs) -> None:
        for out in outs:
            if out.token_ids:
                received[i].append(time.monotonic())
                counts[i] += len(out.token_ids)

    def start_reader(i: int, handle) -> None:  # called by the driver as it submits: read from the first token
        threads.append(threading.Thread(target=record, args=(i, handle)))
        threads[-1].start()

    driver = LoadDriver(
        svc,
        requests,
        [0.0] * len(requests),  # all at once: one service.batch(), so they start in one step as in generate
        consume_outputs=False,
        on_submit=start_reader if readers == "threads" else None,
    )
    start = time.monotonic()
    driver.start()
    if readers == "poll":
        while not driver.done:
            time.sleep(0.005)
            for i, h in enumerate(list(driver.handles)):
                record(i, h.drain())
        for i, h in enumerate(driver.handles):
            record(i, h.drain())
    driver.wait(interval=0.01)
    for t in threads:
        t.join()
    wall = time.monotonic() - start
    svc.shutdown(close_engine=False)  # the next round's generate reuses the engine
    ms = [h.metrics for h in driver.handles]
    if readers == "none":
        return dict(
            tokens=sum(m.num_generation_tokens for m in ms),
            wall=wall,
            ttft=[m.time_to_first_token for m in ms],
            itl=[x for m in ms for x in m.inter_token_latencies],
        )
    ttft = [r[0] - m.arrival_time for r, m in zip(received, ms)]
    itl = [b - a for r in received for a, b in itertools.pairwise(r)]
    return dict(tokens=sum(counts), wall=wall, ttft=ttft, itl=itl)


def pct(xs: list[float], q: float) -> float:
    """The q-th percentile of seconds, in milliseconds (nan for none)."""
    value = percentile(xs, q)
    return float("nan") if value is None else value * 1000


def _parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="HF model dir (default: the SmolLM2-135M-Instruct demo model)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--num-requests", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per mode (medians are reported)")
    # 1 by default: on a busy 2-core box a 2-thread OpenMP team on the main thread stalls in its barriers
    # (LLM.generate measured ~8x slower there than on a worker thread), which would swamp what we measure.
    ap.add_argument(
        "--readers",
        choices=("threads", "poll", "none"),
        default="threads",
        help="streaming clients: a blocking reader thread per request, one thread polling drain(), "
        "or none (read at the end: what the engine thread alone costs)",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads for both modes (0: torch's choice)")
    return ap.parse_args()


def report(runs: dict[str, list[dict]]) -> None:
    """Median throughput and TTFT / ITL percentiles per mode, then the streaming / generate ratio."""
    header = f"{'mode':10s} {'tok/s (median)':>15s} {'TTFT p50 ms':>12s} {'TTFT p99 ms':>12s} {'ITL p50 ms':>11s} {'ITL p99 ms':>11s}"
    print(header)
    print("-" * len(header))
    tput = {}
    for mode, results in runs.items():
        tput[mode] = statistics.median(r["tokens"] / r["wall"] for r in results)
        ttft = [x for r in results for x in r["ttft"]]
        itl = [x for r in results for x in r["itl"]]
        print(
            f"{mode:10s} {tput[mode]:15.1f} {pct(ttft, 50):12.1f} {pct(ttft, 99):12.1f} "
            f"{pct(itl, 50):11.1f} {pct(itl, 99):11.1f}"
        )
    per_round = [
        s["tokens"] / s["wall"] / (g["tokens"] / g["wall"]) for g, s in zip(runs["generate"], runs["streaming"])
    ]
    ratio = tput["streaming"] / tput["generate"]
    print(
        f"\nthroughput ratio streaming / generate = {ratio:.3f} (target >= 0.97); "
        f"per round: {', '.join(f'{x:.3f}' for x in per_round)}"
    )


def main() -> None:
    args = _parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model is None:
        from nanovllm_tui.engine.demo_model import ensure_demo_model

        args.model = str(ensure_demo_model())
    llm = RecordingLLM(
        args.model,
        device=args.device,
        kvcache_block_size=16,
        max_model_len=512,
        num_kvcache_blocks=args.num_requests * (512 // 16),
        enable_prefix_caching=False,
    )
    ps = prompts(args.num_requests)
    sp = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)
    llm.generate(ps[:2], SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)  # warm-up
    runs: dict[str, list[dict]] = {"generate": [], "streaming": []}
    for r in range(args.rounds):
        for mode in ("generate", "streaming"):
            res = run_generate(llm, ps, sp) if mode == "generate" else run_streaming(llm, ps, sp, args.readers)
            runs[mode].append(res)
            print(
                f"round {r + 1} {mode:9s}: {res['tokens']} tokens in {res['wall']:.2f} s "
                f"= {res['tokens'] / res['wall']:.1f} tok/s",
                flush=True,
            )
    print(
        f"\n{args.num_requests} concurrent requests x {args.max_tokens} tokens, greedy, {args.rounds} rounds, "
        f"device={args.device}, torch threads={torch.get_num_threads()}, readers={args.readers}"
    )
    report(runs)


if __name__ == "__main__":
    main()
