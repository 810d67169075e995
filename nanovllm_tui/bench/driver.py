"""BenchRun: the app's benchmark driver. Submits a workload to the EngineService (all at once or at Poisson
arrival times, from a small thread) and is polled from the UI timer; nothing here blocks the engine."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from nanovllm_tui.bench.workload import make_offline_workload, poisson_arrivals
from nanovllm_tui.engine.sampling_params import SamplingParams


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    """What the benchmark screen's form describes."""

    num_requests: int = 16
    prompt_len: tuple[int, int] = (32, 128)
    output_len: tuple[int, int] = (16, 64)
    request_rate: float = float("inf")  # requests/s; inf = all at once
    seed: int = 0

    def validate(self, max_model_len: int) -> None:
        if self.num_requests < 1:
            raise ValueError(f"requests={self.num_requests} must be >= 1")
        for name, (lo, hi) in (("prompt length", self.prompt_len), ("output length", self.output_len)):
            if lo < 1 or hi < lo:
                raise ValueError(f"{name} range {lo}-{hi} must satisfy 1 <= min <= max")
        if self.prompt_len[1] + self.output_len[1] > max_model_len:
            raise ValueError(
                f"max prompt + max output = {self.prompt_len[1] + self.output_len[1]} exceeds "
                f"max_model_len={max_model_len}; lower them or raise --max-model-len"
            )
        if not self.request_rate > 0:
            raise ValueError(f"rate={self.request_rate} must be > 0 requests/s")


@dataclass(frozen=True, slots=True)
class BenchResult:
    requests: int
    finished: int
    prompt_tokens: int
    output_tokens: int
    seconds: float
    throughput: float  # output tokens / s
    ttft_p50: float
    ttft_p99: float
    itl_p50: float
    itl_p99: float
    preemptions: int
    prefix_hit_rate: float


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]); 0 for no values."""
    if not values:
        return 0.0
    v = sorted(values)
    k = (len(v) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


class BenchRun:
    """One benchmark run through a live service; chat requests may share the batch with it."""

    def __init__(self, service: Any, spec: WorkloadSpec, run_id: str = "bench"):
        self.service, self.spec, self.run_id = service, spec, run_id
        vocab = service.engine.config.hf_config.vocab_size
        self.requests = make_offline_workload(
            spec.num_requests, spec.prompt_len, spec.output_len, spec.seed, max_token_id=min(10000, vocab - 1)
        )
        self.arrivals = poisson_arrivals(spec.num_requests, spec.request_rate, spec.seed)
        self.handles: list[Any] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.start_time: float | None = None
        self.end_time: float | None = None
        self.submit_error: str | None = None
        self._stats_before = None

    @property
    def total(self) -> int:
        return len(self.requests)

    def start(self) -> None:
        self._stats_before = self.service.stats()
        self.start_time = time.monotonic()
        self._thread = threading.Thread(target=self._submit_all, name=f"{self.run_id}-submit", daemon=True)
        self._thread.start()

    def _submit_all(self) -> None:
        for i, (req, at) in enumerate(zip(self.requests, self.arrivals)):
            delay = self.start_time + at - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            if self._stop.is_set():
                return
            sp = SamplingParams(temperature=0.0, max_tokens=req.max_tokens, ignore_eos=True)
            try:
                handle = self.service.submit(list(req.prompt_token_ids), sp, request_id=f"{self.run_id}-{i}")
            except (ValueError, RuntimeError) as exc:
                self.submit_error = str(exc)
                return
            with self._lock:
                self.handles.append(handle)

    def poll(self) -> None:
        """Consume whatever the handles hold (non-blocking); marks the end when every request finished."""
        with self._lock:
            handles = list(self.handles)
        for h in handles:
            h.drain()
        if self.end_time is None and self.done:
            self.end_time = time.monotonic()

    @property
    def num_finished(self) -> int:
        with self._lock:
            return sum(1 for h in self.handles if h.finished)

    @property
    def done(self) -> bool:
        submitted_all = self._thread is not None and not self._thread.is_alive()
        with self._lock:
            return submitted_all and all(h.finished for h in self.handles)

    def stop(self) -> None:
        """Stop submitting and abort what is in flight."""
        self._stop.set()
        with self._lock:
            handles = list(self.handles)
        for h in handles:
            if not h.done:
                self.service.abort(h.request_id)

    def wait(self, timeout: float = 600.0, interval: float = 0.05) -> None:
        """Poll until done (for scripts and tests without a UI)."""
        deadline = time.monotonic() + timeout
        while not self.done:
            if time.monotonic() > deadline:
                raise TimeoutError(f"benchmark did not finish within {timeout} s")
            self.poll()
            time.sleep(interval)
        self.poll()

    def result(self) -> BenchResult:
        with self._lock:
            handles = list(self.handles)
        done = [h for h in handles if h.finished]
        ttfts = [h.metrics.time_to_first_token for h in done if h.metrics.time_to_first_token is not None]
        itls = [x for h in done for x in h.metrics.inter_token_latencies]
        out_tokens = sum(h.metrics.num_generation_tokens for h in done)
        ends = [h.metrics.finished_time for h in done if h.metrics.finished_time is not None]
        seconds = (max(ends) - self.start_time) if ends and self.start_time is not None else 0.0
        before, after = self._stats_before, self.service.stats()
        queries = after.prefix_cache_queries - before.prefix_cache_queries if before else 0
        hits = after.prefix_cache_hits - before.prefix_cache_hits if before else 0
        return BenchResult(
            requests=self.total,
            finished=sum(1 for h in done if h.finish_reason in ("stop", "length")),
            prompt_tokens=sum(h.metrics.num_prompt_tokens for h in done),
            output_tokens=out_tokens,
            seconds=seconds,
            throughput=out_tokens / seconds if seconds > 0 else 0.0,
            ttft_p50=percentile(ttfts, 50),
            ttft_p99=percentile(ttfts, 99),
            itl_p50=percentile(itls, 50),
            itl_p99=percentile(itls, 99),
            preemptions=sum(h.metrics.num_preemptions for h in done),
            prefix_hit_rate=hits / queries if queries else 0.0,
        )
