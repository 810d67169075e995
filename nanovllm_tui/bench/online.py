"""Online serving benchmark: requests arrive at Poisson times through EngineService; per-request TTFT, ITL,
TPOT and end-to-end latency (as vLLM's benchmark_serving reports them) from the handles' engine-side timings."""

from __future__ import annotations

import threading
import time

from tqdm.auto import tqdm

from nanovllm_tui.bench.results import Distribution, OnlineResult
from nanovllm_tui.bench.workload import BenchRequest, total_prompt_tokens
from nanovllm_tui.engine import SamplingParams
from nanovllm_tui.engine.stats import StepStats


def run_online(
    service,
    workload: list[BenchRequest],
    arrivals: list[float],
    request_rate: float,
    temperature: float,
    warmup: bool = True,
    progress: bool = True,
    max_concurrency: int | None = None,
) -> tuple[OnlineResult, list[StepStats]]:
    """Submit request i at arrivals[i] seconds after the start (ignore_eos), wait for all, summarise.

    Timings are the service's RequestMetrics (submit() to each sampled token, on the engine's clock), so how
    fast this thread reads its handles does not change them. With max_concurrency, a request whose time has come
    waits until fewer than that many are in flight (vLLM's --max-concurrency); its TTFT counts from submit.
    Also returns every StepStats of the run (collected by a subscriber on the engine thread, so none is lost
    to the service's ring buffer).
    """
    if len(arrivals) != len(workload):
        raise ValueError(f"{len(arrivals)} arrival times for {len(workload)} requests")
    if warmup:
        ids = service.engine.tokenize("Benchmark: ") or [0]
        service.submit(ids, SamplingParams(max_tokens=16)).result(timeout=600)
    steps: list[StepStats] = []
    slot_freed = threading.Event()

    def on_step(step: StepStats) -> None:  # engine thread: must not block
        steps.append(step)
        if step.finished_request_ids:
            slot_freed.set()

    unsubscribe = service.subscribe(on_step)
    bar = tqdm(total=len(workload), desc="online", unit="req", disable=not progress, dynamic_ncols=True)
    handles = []
    start = time.monotonic()
    try:
        for r, at in zip(workload, arrivals):
            delay = start + at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            while max_concurrency and sum(not h.done for h in handles) >= max_concurrency:
                slot_freed.wait(0.05)
                slot_freed.clear()
            sp = SamplingParams(temperature=temperature, max_tokens=r.max_tokens, ignore_eos=True)
            handles.append(service.submit(list(r.prompt_token_ids), sp))
            bar.update(sum(h.done for h in handles) - bar.n)
        while (done := sum(h.done for h in handles)) < len(handles):  # a fatal error fails (finishes) them all
            bar.update(done - bar.n)
            time.sleep(0.05)
        for h in handles:
            h.result(timeout=60)
    finally:
        unsubscribe()
        bar.close()
    result = summarise(handles, workload, request_rate, service.engine.config.scheduling_policy, steps)
    result.max_concurrency = max_concurrency
    return result, steps


def summarise(
    handles, workload: list[BenchRequest], request_rate: float, policy: str, history: list[StepStats]
) -> OnlineResult:
    """Latency distributions and throughput from finished handles."""
    ttft, itl, tpot, e2e = [], [], [], []
    errors = output_tokens = 0
    first_arrival = min(h.metrics.arrival_time for h in handles)
    last_finish = first_arrival
    for h in handles:
        m = h.metrics
        if h.finish_reason != "length":  # ignore_eos: every request should run to its max_tokens
            errors += 1
        output_tokens += m.num_generation_tokens
        if m.time_to_first_token is not None:
            ttft.append(m.time_to_first_token)
        itl.extend(m.inter_token_latencies)
        end = m.finished_time if m.finished_time is not None else (m.token_times[-1] if m.token_times else None)
        if end is not None:
            e2e.append(end - m.arrival_time)
            last_finish = max(last_finish, end)
            if m.num_generation_tokens > 1 and m.first_token_time is not None:
                tpot.append((end - m.first_token_time) / (m.num_generation_tokens - 1))
    duration = last_finish - first_arrival
    running = [s.num_running for s in history if s.start_time >= first_arrival]
    return OnlineResult(
        num_requests=len(handles),
        request_rate=request_rate,
        policy=policy,
        duration=duration,
        prompt_tokens=total_prompt_tokens(workload),
        output_tokens=output_tokens,
        num_errors=errors,
        ttft=Distribution.of_seconds(ttft),
        itl=Distribution.of_seconds(itl),
        tpot=Distribution.of_seconds(tpot),
        e2e=Distribution.of_seconds(e2e),
        mean_in_flight=sum(e2e) / duration if duration > 0 else 0.0,
        mean_running=sum(running) / len(running) if running else None,
    )
