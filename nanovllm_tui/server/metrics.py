"""ServerMetrics: the server's Prometheus metrics, with vLLM's names, types, meanings and histogram buckets
(vllm/v1/metrics/loggers.py), each labelled model_name and engine="0" as vLLM's single-engine server does.

Where each comes from:
- Scheduler state and the engine's cumulative counters (running, waiting, KV cache usage, prefix cache
  queries/hits in tokens, preemptions) are read from `service.stats()` when /metrics is scraped: the services
  refresh that snapshot after every step (also after a step that only freed an aborted request's blocks, which
  publishes no StepStats) and before a finished request's last delta, so a scrape after a response sees it.
- vllm:iteration_tokens_total observes each StepStats the service publishes (`service.subscribe`).
- Per-request metrics come from the request's reader: prompt tokens when its first token arrives and generation
  tokens as they arrive (vLLM counts them per iteration the same way), then TTFT, inter-token latencies, e2e
  latency and request_success{finished_reason} when it finishes.
One registry per server (never prometheus_client's global one), so several servers can live in one process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from nanovllm_tui.engine.serving.request_handle import RequestMetrics
from nanovllm_tui.engine.stats import EngineStats, StepStats

# vLLM's buckets, so dashboards and recording rules built for vLLM read ours unchanged.
ITERATION_TOKENS_BUCKETS: list[float] = [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
TTFT_BUCKETS = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
]  # fmt: skip
INTER_TOKEN_BUCKETS = [
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
]  # fmt: skip
E2E_BUCKETS = [
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
    120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
]  # fmt: skip
FINISH_REASONS = ("stop", "length", "abort", "error")
LABELS = ["model_name", "engine"]


class EngineCollector(Collector):
    """Gauges and cumulative engine counters from the service's latest EngineStats, read at scrape time."""

    def __init__(self, label_values: list[str], stats: Callable[[], EngineStats | None]):
        self._values = label_values
        self._stats = stats

    def describe(self) -> Iterator[Metric]:
        return iter(self._families(None))

    def collect(self) -> Iterator[Metric]:
        return iter(self._families(self._stats()))

    def _families(self, s: EngineStats | None) -> list[Metric]:
        gauges = [
            ("vllm:num_requests_running", "Number of requests in model execution batches.", s and s.num_running),
            ("vllm:num_requests_waiting", "Number of requests waiting to be processed.", s and s.num_waiting),
            (
                "vllm:kv_cache_usage_perc",
                "KV-cache usage. 1 means 100 percent usage.",
                s and s.kv_cache_usage_perc,
            ),
        ]
        counters = [
            (
                "vllm:prefix_cache_queries",
                "Prefix cache queries, in terms of number of queried tokens.",
                s and s.prefix_cache_queries,
            ),
            (
                "vllm:prefix_cache_hits",
                "Prefix cache hits, in terms of number of cached tokens.",
                s and s.prefix_cache_hits,
            ),
            ("vllm:num_preemptions", "Cumulative number of preemption from the engine.", s and s.num_preemptions),
        ]
        families: list[Metric] = []
        for name, doc, value in gauges:
            gauge = GaugeMetricFamily(name, doc, labels=LABELS)
            gauge.add_metric(self._values, float(value or 0))
            families.append(gauge)
        for name, doc, value in counters:
            counter = CounterMetricFamily(name, doc, labels=LABELS)
            counter.add_metric(self._values, float(value or 0))
            families.append(counter)
        return families


class ServerMetrics:
    """The server's registry; `stats` returns the service's EngineStats (None while the engine starts)."""

    def __init__(self, model_name: str, stats: Callable[[], EngineStats | None]):
        prometheus_client.disable_created_metrics()  # as vLLM does: no *_created series
        self.registry = CollectorRegistry()
        values = [model_name, "0"]
        r = self.registry

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, LABELS, registry=r).labels(*values)

        def histogram(name: str, doc: str, buckets: Sequence[float]) -> Histogram:
            return Histogram(name, doc, LABELS, registry=r, buckets=buckets).labels(*values)

        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter("vllm:generation_tokens", "Number of generation tokens processed.")
        self.iteration_tokens = histogram(
            "vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.", ITERATION_TOKENS_BUCKETS
        )
        self.ttft = histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", TTFT_BUCKETS)  # fmt: skip
        self.inter_token = histogram(
            "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", INTER_TOKEN_BUCKETS
        )
        self.e2e = histogram(
            "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", E2E_BUCKETS
        )
        success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            [*LABELS, "finished_reason"],
            registry=r,
        )
        self.request_success = {reason: success.labels(*values, reason) for reason in FINISH_REASONS}
        r.register(EngineCollector(values, stats))

    def on_step(self, step: StepStats) -> None:
        """A service subscriber: one observation per engine step."""
        self.iteration_tokens.observe(step.num_prefill_tokens + step.num_decode_tokens)

    def on_tokens(self, num_tokens: int, first: bool, num_prompt_tokens: int) -> None:
        """A request's output delta; `first` when it carries the request's first token."""
        if first:
            self.prompt_tokens.inc(num_prompt_tokens)
        if num_tokens:
            self.generation_tokens.inc(num_tokens)

    def on_finish(self, metrics: RequestMetrics, reason: str | None) -> None:
        """A request finished: its latencies and its finish reason."""
        if metrics.time_to_first_token is not None:
            self.ttft.observe(metrics.time_to_first_token)
        for gap in metrics.inter_token_latencies:
            self.inter_token.observe(gap)
        if metrics.e2e_latency is not None:
            self.e2e.observe(metrics.e2e_latency)
        counter = self.request_success.get(reason or "error")
        if counter is not None:
            counter.inc()

    def render(self) -> bytes:
        """The text exposition format (what GET /metrics returns)."""
        return prometheus_client.generate_latest(self.registry)
