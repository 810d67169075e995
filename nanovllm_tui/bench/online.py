"""Online serving benchmark: requests arrive at Poisson times through EngineService; per-request TTFT, ITL,
TPOT and end-to-end latency (as vLLM's benchmark_serving reports them) from the handles' engine-side timings."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from nanovllm_tui.bench.driver import LoadDriver
from nanovllm_tui.bench.results import Distribution, OnlineResult
from nanovllm_tui.bench.workload import BenchRequest, total_prompt_tokens
from nanovllm_tui.engine.sampling_params import SamplingParams

if TYPE_CHECKING:
    from nanovllm_tui.engine.serving.protocol import Service
    from nanovllm_tui.engine.serving.request_handle import RequestHandle
    from nanovllm_tui.engine.stats import StepStats

WARMUP_PROMPT = "Benchmark: "


def run_online(
    service: Service,
    workload: list[BenchRequest],
    arrivals: list[float],
    request_rate: float,
    temperature: float,
    *,
    policy: str,
    warmup: bool = True,
    progress: bool = True,
    max_concurrency: int | None = None,
    run_id: str = "bench",
    timeout: float = 3600.0,
    say: Callable[[str], None] | None = None,
) -> tuple[OnlineResult, list[StepStats]]:
    """Submit request i at arrivals[i] seconds after the start (ignore_eos), wait for all, summarise.

    Timings are the service's RequestMetrics (submit() to each sampled token, on the engine's clock). With
    max_concurrency, a request whose time has come waits until fewer than that many are in flight (vLLM's
    --max-concurrency); its TTFT counts from submit. Also returns every StepStats of the run (collected by a
    subscriber, so none is lost to the service's ring buffer). `policy` is the one the service runs now.
    say() hears the warm-up's start and end (before the timed run's bar).
    """
    if warmup:
        start = time.perf_counter()
        if say is not None:
            say("warming up: 1 request…")
        ids = service.tokenize(WARMUP_PROMPT) or [0]
        service.submit(ids, SamplingParams(max_tokens=16)).result(timeout=600)
        if say is not None:
            say(f"warm-up done in {time.perf_counter() - start:.1f} s")
    driver = LoadDriver(
        service,
        workload,
        arrivals,
        temperature=temperature,
        max_concurrency=max_concurrency,
        run_id=run_id,
        record_steps=True,
    )
    bar = tqdm(total=len(workload), desc="online", unit="req", disable=not progress, dynamic_ncols=True)
    try:
        driver.start()
        driver.wait(timeout, on_progress=lambda n: bar.update(n - bar.n))
    finally:
        bar.close()
    if driver.submit_error is not None:
        raise RuntimeError(f"the service refused a request: {driver.submit_error}")
    result = summarise(driver.handles, workload, request_rate, policy, driver.steps)
    result.max_concurrency = max_concurrency
    return result, driver.steps


@dataclass(frozen=True, slots=True)
class RequestTiming:
    """One request's timings (time.monotonic seconds), however it was measured: the engine's handle in process,
    the client's stream over HTTP (bench/http_load.py)."""

    start: float  # submitted (in process) or sent (HTTP)
    first_token: float | None
    token_times: Sequence[float]  # each generated token (in process) or each streamed chunk with text (HTTP)
    end: float | None
    output_tokens: int
    ok: bool  # ended with "length", as ignore_eos asks

    @classmethod
    def of_handle(cls, h: RequestHandle) -> RequestTiming:
        m = h.metrics
        end = m.finished_time if m.finished_time is not None else (m.token_times[-1] if m.token_times else None)
        ok = h.finish_reason == "length"  # ignore_eos: every request should run to its max_tokens
        return cls(m.arrival_time, m.first_token_time, list(m.token_times), end, m.num_generation_tokens, ok)


def summarise(
    handles: list[RequestHandle],
    workload: list[BenchRequest],
    request_rate: float,
    policy: str,
    history: list[StepStats],
) -> OnlineResult:
    """Latency distributions and throughput from finished handles."""
    return summarise_timings([RequestTiming.of_handle(h) for h in handles], workload, request_rate, policy, history)


def summarise_timings(
    timings: list[RequestTiming],
    workload: list[BenchRequest],
    request_rate: float,
    policy: str,
    history: Sequence[StepStats] = (),
) -> OnlineResult:
    """Latency distributions (as vLLM's benchmark_serving) and throughput over first start to last end."""
    ttft: list[float] = []
    itl: list[float] = []
    tpot: list[float] = []
    e2e: list[float] = []
    first_arrival = min(t.start for t in timings)
    last_finish = first_arrival
    for t in timings:
        if t.first_token is not None:
            ttft.append(t.first_token - t.start)
        itl.extend(b - a for a, b in itertools.pairwise(t.token_times))
        if t.end is not None:
            e2e.append(t.end - t.start)
            last_finish = max(last_finish, t.end)
            if t.output_tokens > 1 and t.first_token is not None:
                tpot.append((t.end - t.first_token) / (t.output_tokens - 1))
    duration = last_finish - first_arrival
    running = [s.num_running for s in history if s.start_time >= first_arrival]
    return OnlineResult(
        num_requests=len(timings),
        request_rate=request_rate,
        policy=policy,
        duration=duration,
        prompt_tokens=total_prompt_tokens(workload),
        output_tokens=sum(t.output_tokens for t in timings),
        num_errors=sum(not t.ok for t in timings),
        ttft=Distribution.of_seconds(ttft),
        itl=Distribution.of_seconds(itl),
        tpot=Distribution.of_seconds(tpot),
        e2e=Distribution.of_seconds(e2e),
        mean_in_flight=sum(e2e) / duration if duration > 0 else 0.0,
        mean_running=sum(running) / len(running) if running else None,
    )
