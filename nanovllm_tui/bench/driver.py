"""LoadDriver: the one online load generator over a Service. Its ArrivalDriver base (bench/arrivals.py) submits
the workload at its arrival times from a small thread (optionally at most N in flight); this class submits each
request to the service and tracks the handles; nothing here blocks the engine.

`nanovllm-tui bench online` waits on it (bench/online.py), the app's benchmark screen polls it from its UI
timer (BenchRun below), and benchmarks/streaming_bench.py attaches reader threads to its handles.
Timings come from the handles' RequestMetrics (the engine's clock), so how often a caller polls does not
change them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nanovllm_tui.bench.arrivals import ArrivalDriver
from nanovllm_tui.bench.results import percentile
from nanovllm_tui.bench.workload import BenchRequest, make_offline_workload, poisson_arrivals
from nanovllm_tui.engine.sampling_params import SamplingParams

if TYPE_CHECKING:
    from nanovllm_tui.engine.serving.protocol import Service
    from nanovllm_tui.engine.serving.request_handle import RequestHandle
    from nanovllm_tui.engine.stats import EngineStats, StepStats


class LoadDriver(ArrivalDriver["RequestHandle"]):
    """One run of a workload through a live service (other requests may share the batch with it)."""

    def __init__(
        self,
        service: Service,
        requests: Sequence[BenchRequest],
        arrivals: Sequence[float],
        *,
        temperature: float = 0.0,
        max_concurrency: int | None = None,
        run_id: str = "bench",
        record_steps: bool = False,
        consume_outputs: bool = True,
        on_submit: Callable[[int, RequestHandle], None] | None = None,
    ):
        """record_steps: keep every StepStats of the run (a subscriber sees each, unlike the history buffer).
        consume_outputs=False leaves the handles' outputs to the caller's readers (on_submit sees each handle)."""
        if len(arrivals) != len(requests):
            raise ValueError(f"{len(arrivals)} arrival times for {len(requests)} requests")
        super().__init__(
            self._submit_request,
            arrivals,
            max_concurrency=max_concurrency,
            run_id=run_id,
            batch=service.batch,
            on_submit=on_submit,
        )
        self.service = service
        self.requests = list(requests)
        self.temperature = temperature
        self.record_steps = record_steps
        self.consume_outputs = consume_outputs
        self.steps: list[StepStats] = []
        self.stats_before: EngineStats | None = None
        self._unsubscribe: Callable[[], None] | None = None

    def start(self) -> None:
        """Begin submitting (returns at once)."""
        self.stats_before = self.service.stats()
        self._unsubscribe = self.service.subscribe(self._on_step)
        super().start()

    def _on_step(self, step: StepStats) -> None:  # a service thread: must not block
        if self.record_steps:
            self.steps.append(step)
        if step.finished_request_ids:
            self.notify_finished()

    def _submit_request(self, i: int) -> RequestHandle:
        req = self.requests[i]
        sp = SamplingParams(temperature=self.temperature, max_tokens=req.max_tokens, ignore_eos=True)
        return self.service.submit(list(req.prompt_token_ids), sp, request_id=f"{self.run_id}-{i}")

    def _consume(self) -> None:
        if self.consume_outputs:
            with self._lock:
                handles = list(self.handles)
            for h in handles:
                h.drain()

    def _release(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    """What the app's benchmark screen form describes."""

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
    """The app's benchmark table (seconds; 0 where nothing was measured)."""

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


class BenchRun(LoadDriver):
    """The app's benchmark: a greedy LoadDriver built from the screen's form, polled by the UI timer."""

    def __init__(self, service: Service, spec: WorkloadSpec, run_id: str = "bench"):
        vocab = service.engine_info().vocab_size
        requests = make_offline_workload(
            spec.num_requests, spec.prompt_len, spec.output_len, spec.seed, max_token_id=min(10000, vocab - 1)
        )
        arrivals = poisson_arrivals(spec.num_requests, spec.request_rate, spec.seed)
        super().__init__(service, requests, arrivals, run_id=run_id)
        self.spec = spec

    def result(self) -> BenchResult:
        with self._lock:
            done = [h for h in self.handles if h.done]
        ms = [h.metrics for h in done]
        ttfts = [t for m in ms if (t := m.time_to_first_token) is not None]
        itls = [x for m in ms for x in m.inter_token_latencies]
        out_tokens = sum(m.num_generation_tokens for m in ms)
        ends = [m.finished_time for m in ms if m.finished_time is not None]
        seconds = (max(ends) - self.start_time) if ends and self.start_time is not None else 0.0
        before, after = self.stats_before, self.service.stats()
        queries = after.prefix_cache_queries - before.prefix_cache_queries if before else 0
        hits = after.prefix_cache_hits - before.prefix_cache_hits if before else 0
        return BenchResult(
            requests=self.total,
            finished=sum(1 for h in done if h.finish_reason in ("stop", "length")),
            prompt_tokens=sum(m.num_prompt_tokens for m in ms),
            output_tokens=out_tokens,
            seconds=seconds,
            throughput=out_tokens / seconds if seconds > 0 else 0.0,
            ttft_p50=percentile(ttfts, 50) or 0.0,
            ttft_p99=percentile(ttfts, 99) or 0.0,
            itl_p50=percentile(itls, 50) or 0.0,
            itl_p99=percentile(itls, 99) or 0.0,
            preemptions=sum(m.num_preemptions for m in ms),
            prefix_hit_rate=hits / queries if queries else 0.0,
        )
