"""Soak the process service: random chats, aborts, policy switches and preemption pressure for a given time.

    python scripts/soak.py --seconds 60            # CI's run (tests/test_soak.py)
    python scripts/soak.py --seconds 1800 --json soak.json

Client threads submit chats (the demo model's chat template), prompt strings and token ids with random sampling
settings to one ProcessEngineService with a KV cache small enough to force preemptions; a chaos thread aborts
random live requests, switches the scheduling policy and resets the prefix cache. At the end every handle must
finish within a deadline, no block may stay in use, and the engine process's RSS may not keep growing
(second half of the run against the first). Exit 0 when every check holds, 1 otherwise, with one line per check.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from dataclasses import asdict, dataclass, field

import psutil

from nanovllm_tui.engine.demo_model import ensure_demo_model
from nanovllm_tui.engine.sampling_params import SamplingParams
from nanovllm_tui.engine.serving.process_service import ProcessEngineService
from nanovllm_tui.engine.serving.request_handle import RequestHandle

ENGINE = dict(kvcache_block_size=16, num_kvcache_blocks=32, max_model_len=384, max_num_seqs=8)
WORDS = [
    "the",
    "engine",
    "schedules",
    "blocks",
    "and",
    "tokens",
    "while",
    "a",
    "cache",
    "of",
    "prefixes",
    "grows",
    "and",
    "shrinks",
    "under",
    "load",
]


@dataclass
class Tally:
    """What the soak did and saw (one per run; the client threads add to it under its lock)."""

    submitted: int = 0
    rejected: int = 0
    aborts_sent: int = 0
    policy_switches: int = 0
    cache_resets: int = 0
    finish_reasons: dict[str, int] = field(default_factory=dict)
    rss_mb: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, reason: str | None) -> None:
        with self.lock:
            key = reason or "none"
            self.finish_reasons[key] = self.finish_reasons.get(key, 0) + 1


def random_prompt(rng: random.Random) -> str | list[int] | list[dict[str, str]]:
    """A chat history, a prompt string or token ids, of a length that sometimes needs several blocks."""
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 120)))
    kind = rng.random()
    if kind < 0.6:
        history = [{"role": "user", "content": text}]
        if rng.random() < 0.3:
            history = [{"role": "system", "content": "Be brief."}, *history]
        return history
    if kind < 0.85:
        return text
    return [rng.randint(1, 1000) for _ in range(rng.randint(1, 200))]


def random_params(rng: random.Random) -> SamplingParams:
    greedy = rng.random() < 0.4
    return SamplingParams(
        temperature=0.0 if greedy else rng.uniform(0.1, 1.5),
        top_p=1.0 if greedy else rng.uniform(0.5, 1.0),
        top_k=-1 if rng.random() < 0.5 else rng.randint(1, 50),
        max_tokens=rng.randint(1, 96),
        seed=rng.randint(0, 2**31) if rng.random() < 0.3 else None,
    )


def client(service: ProcessEngineService, stop_at: float, seed: int, tally: Tally, live: list[RequestHandle]) -> None:
    """Submit requests and read them to the end, as a chat UI would, until `stop_at`."""
    rng = random.Random(seed)
    while time.monotonic() < stop_at:
        try:
            handle = service.submit(random_prompt(rng), random_params(rng))
        except ValueError:
            with tally.lock:
                tally.rejected += 1  # e.g. a prompt over max_model_len: rejected up front, by design
            continue
        with tally.lock:
            tally.submitted += 1
            live.append(handle)
        try:
            out = handle.result(timeout=120)
        except TimeoutError:
            continue  # counted as stuck by the end-of-run check
        tally.count(out.finish_reason)


def chaos(service: ProcessEngineService, stop_at: float, seed: int, tally: Tally, live: list[RequestHandle]) -> None:
    """Abort random live requests, switch policies, reset the prefix cache, and sample the engine's RSS."""
    rng = random.Random(seed)
    proc = psutil.Process(service.pid)
    policies = ["mixed", "prefill_first"]
    while time.monotonic() < stop_at:
        time.sleep(rng.uniform(0.2, 1.0))  # chaos at a random pace is the point here, not a wait for a condition
        with tally.lock:
            candidates = [h for h in live[-32:] if not h.done]
        action = rng.random()
        if action < 0.2 and candidates:
            rng.choice(candidates).abort()
            tally.aborts_sent += 1
        elif action < 0.5:
            service.set_scheduling_policy(rng.choice(policies))
            tally.policy_switches += 1
        elif action < 0.55:
            service.reset_prefix_cache()
            tally.cache_resets += 1
        tally.rss_mb.append(proc.memory_info().rss / 2**20)


def checks(service: ProcessEngineService, tally: Tally, live: list[RequestHandle], deadline: float) -> list[str]:
    """The end-of-run checks; returns the failures (empty when all hold)."""
    failures = []
    stuck = []
    for h in live:
        try:
            h.result(timeout=max(0.01, deadline - time.monotonic()))
        except TimeoutError:
            stuck.append(h.request_id)
    if stuck:
        failures.append(f"{len(stuck)} handles never finished: {stuck[:5]}")
    end = time.monotonic() + 10
    while service.stats().num_blocks_used and time.monotonic() < end:
        time.sleep(0.1)  # the engine frees the last aborted blocks at its next step
    stats = service.stats()
    if stats.num_blocks_used:
        failures.append(f"{stats.num_blocks_used} KV blocks still in use after every request ended")
    if stats.num_running or stats.num_waiting:
        failures.append(f"engine still has {stats.num_running} running / {stats.num_waiting} waiting")
    if stats.num_preemptions == 0:  # the small cache is there to force them; none means the soak missed its aim
        failures.append("no preemption happened: the run never put the KV cache under pressure")
    half = len(tally.rss_mb) // 2
    if half >= 4:
        first, second = max(tally.rss_mb[:half]), max(tally.rss_mb[half:])
        if second > first * 1.10 + 16:
            failures.append(f"engine RSS grew from {first:.0f} MiB (first half) to {second:.0f} MiB (second half)")
    if not service.is_running:
        failures.append(f"the engine stopped: {service.fatal_error}")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long clients keep submitting")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the tally and the final stats here")
    args = parser.parse_args()
    service = ProcessEngineService(ensure_demo_model(), quiet=True, **ENGINE)
    tally, live = Tally(), []
    stop_at = time.monotonic() + args.seconds
    threads = [
        threading.Thread(target=client, args=(service, stop_at, args.seed + i, tally, live), daemon=True)
        for i in range(args.clients)
    ]
    threads.append(threading.Thread(target=chaos, args=(service, stop_at, args.seed + 99, tally, live), daemon=True))
    for t in threads:
        t.start()
    for t in threads:
        t.join(args.seconds + 180)
    try:
        failures = checks(service, tally, live, time.monotonic() + 120)
        stats = service.stats()
    finally:
        service.shutdown(10)
    summary = {
        "submitted": tally.submitted,
        "rejected": tally.rejected,
        "aborts_sent": tally.aborts_sent,
        "policy_switches": tally.policy_switches,
        "cache_resets": tally.cache_resets,
        "finish_reasons": tally.finish_reasons,
        "rss_mb_first_last": [round(tally.rss_mb[0]), round(tally.rss_mb[-1])] if tally.rss_mb else [],
        "preemptions": stats.num_preemptions,
        "prefix_cache_hits": stats.prefix_cache_hits,
        "steps": stats.num_steps,
    }
    print(f"soak {args.seconds:.0f} s: {json.dumps(summary)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"summary": summary, "failures": failures, "stats": asdict(stats)}, f, indent=1)
    for line in failures:
        print(f"FAIL: {line}", file=sys.stderr)
    print("soak: all checks hold" if not failures else f"soak: {len(failures)} checks failed")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
