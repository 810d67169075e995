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
import statistics
import threading
import time

import numpy as np
import torch

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
    """readers="threads": one blocking reader thread per request; "poll": one thread drain()s all every 5 ms;
    "none": nobody reads until the end (the engine thread's own cost; TTFT/ITL from the handles' metrics)."""
    svc = EngineService(llm)
    received: list[list[float]] = [[] for _ in ps]
    submitted: list[float] = [0.0] * len(ps)
    counts = [0] * len(ps)

    def reader(i: int, handle) -> None:
        for out in handle:
            if out.token_ids:
                received[i].append(time.monotonic())
                counts[i] += len(out.token_ids)

    def poller(handles) -> None:
        while not all(h.finished for h in handles):
            time.sleep(0.005)
            for i, h in enumerate(handles):
                for out in h.drain():
                    if out.token_ids:
                        received[i].append(time.monotonic())
                        counts[i] += len(out.token_ids)

    threads, handles = [], []
    start = time.monotonic()
    with svc.batch():  # all arrive together and start in one step, as in generate
        for i, p in enumerate(ps):
            submitted[i] = time.monotonic()
            handles.append(svc.submit(p, sp))
    if readers == "threads":
        for i, h in enumerate(handles):
            threads.append(threading.Thread(target=reader, args=(i, h)))
            threads[-1].start()
    if readers == "poll":
        threads.append(threading.Thread(target=poller, args=(handles,)))
        threads[-1].start()
    for t in threads:
        t.join()
    while readers == "none" and not all(h.done for h in handles):
        time.sleep(0.01)
    wall = time.monotonic() - start
    svc.shutdown(close_engine=False)  # the next round's generate reuses the engine
    if readers == "none":
        ms = [h.metrics for h in handles]
        return dict(
            tokens=sum(m.num_generation_tokens for m in ms),
            wall=wall,
            ttft=[m.time_to_first_token for m in ms],
            itl=[x for m in ms for x in m.inter_token_latencies],
        )
    ttft = [r[0] - s for r, s in zip(received, submitted)]
    itl = [b - a for r in received for a, b in zip(r, r[1:])]
    return dict(tokens=sum(counts), wall=wall, ttft=ttft, itl=itl)


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) * 1000 if xs else float("nan")


def main() -> None:
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
    args = ap.parse_args()
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
        for mode, fn in (("generate", run_generate), ("streaming", run_streaming)):
            res = fn(llm, ps, sp) if mode == "generate" else fn(llm, ps, sp, args.readers)
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


if __name__ == "__main__":
    main()
