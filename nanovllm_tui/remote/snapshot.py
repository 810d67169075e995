"""RemoteSnapshot: what the dashboard shows of a remote vLLM-compatible server after one poll of /metrics.

Interval figures (rates, percentiles, hit rate) come from the deltas between two scrapes, as Prometheus'
rate() and histogram_quantile() would compute them; a counter that went down means the server restarted, and
its new value is the delta. A figure is None when the server does not export its metric (its name is then in
`not_exported`) or when the interval had nothing to measure (first poll, no new observations).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nanovllm_tui.remote.metrics import Histogram, MetricsSample

# Each figure's metric names, current vLLM name first, then older ones (vLLM < 0.10 and V1 before the renames).
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
PREFIX_QUERIES = ("vllm:prefix_cache_queries", "vllm:gpu_prefix_cache_queries")
PREFIX_HITS = ("vllm:prefix_cache_hits", "vllm:gpu_prefix_cache_hits")
PREEMPTIONS = ("vllm:num_preemptions",)
RUNNING = ("vllm:num_requests_running",)
WAITING = ("vllm:num_requests_waiting",)
PROMPT_TOKENS = ("vllm:prompt_tokens",)
GENERATION_TOKENS = ("vllm:generation_tokens",)
ITERATION_TOKENS = ("vllm:iteration_tokens_total",)  # a histogram whose name really ends in _total
TTFT = ("vllm:time_to_first_token_seconds",)
ITL = ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds")
CACHE_CONFIG = "vllm:cache_config_info"

QUANTILES = (0.5, 0.9, 0.99)


@dataclass(frozen=True, slots=True)
class RemoteSnapshot:
    """One poll's figures; fractions are 0..1, times in seconds, throughputs in tokens per second."""

    time: float  # time.monotonic() of the scrape
    interval: float | None  # seconds since the previous scrape; None on the first
    kv_cache_usage: float | None
    num_running: int | None
    num_waiting: int | None
    prefix_cache_hit_rate: float | None  # hits / queries over the interval
    preemptions: int | None  # over the interval
    tokens_per_iteration: float | None  # mean tokens per engine step over the interval
    prompt_throughput: float | None
    generation_throughput: float | None
    ttft: tuple[float | None, ...] | None  # time to first token at QUANTILES, over the interval
    itl: tuple[float | None, ...] | None  # inter-token latency at QUANTILES, over the interval
    generation_tokens_total: int | None  # since the server started
    block_size: int | None  # from vllm:cache_config_info
    num_gpu_blocks: int | None
    not_exported: frozenset[str]  # names of the figures above whose metric this server does not export

    def exported(self, figure: str) -> bool:
        """False when the server has no metric for `figure` (show "not exported by this server")."""
        return figure not in self.not_exported


def build_snapshot(cur: MetricsSample, prev: MetricsSample | None) -> RemoteSnapshot:
    """The figures of scrape `cur`, with interval figures over the time since `prev` (None: the first scrape)."""
    interval = cur.time - prev.time if prev is not None else None
    missing = set()

    def delta(names: tuple[str, ...], figure: str) -> float | None:
        now = cur.value(*names)
        if now is None:
            missing.add(figure)
            return None
        before = prev.value(*names) if prev is not None else None
        if before is None:
            return None
        return now - before if now >= before else now  # a drop means the server restarted

    def hist(names: tuple[str, ...], figure: str) -> Histogram | None:
        now = cur.histogram(*names)
        if now is None:
            missing.add(figure)
            return None
        return now.since(prev.histogram(*names)) if prev is not None else None

    def gauge(names: tuple[str, ...], figure: str) -> float | None:
        value = cur.value(*names)
        if value is None:
            missing.add(figure)
        return value

    queries, hits = delta(PREFIX_QUERIES, "prefix_cache_hit_rate"), delta(PREFIX_HITS, "prefix_cache_hit_rate")
    preempted = delta(PREEMPTIONS, "preemptions")
    prompt, generated = delta(PROMPT_TOKENS, "prompt_throughput"), delta(GENERATION_TOKENS, "generation_throughput")
    steps = hist(ITERATION_TOKENS, "tokens_per_iteration")
    ttft, itl = hist(TTFT, "ttft"), hist(ITL, "itl")
    kv, running, waiting = (
        gauge(KV_USAGE, "kv_cache_usage"),
        gauge(RUNNING, "num_running"),
        gauge(WAITING, "num_waiting"),
    )
    total = cur.value(*GENERATION_TOKENS)
    config = cur.info.get(CACHE_CONFIG, {})
    return RemoteSnapshot(
        time=cur.time,
        interval=interval,
        kv_cache_usage=kv,
        num_running=_int(running),
        num_waiting=_int(waiting),
        prefix_cache_hit_rate=hits / queries if queries and hits is not None else None,
        preemptions=_int(preempted),
        tokens_per_iteration=steps.sum / steps.count if steps is not None and steps.count > 0 else None,
        prompt_throughput=_rate(prompt, interval),
        generation_throughput=_rate(generated, interval),
        ttft=_quantiles(ttft),
        itl=_quantiles(itl),
        generation_tokens_total=_int(total),
        block_size=_int_label(config.get("block_size")),
        num_gpu_blocks=_int_label(config.get("num_gpu_blocks")),
        not_exported=frozenset(missing),
    )


def histogram_quantile(q: float, h: Histogram) -> float | None:
    """Prometheus' histogram_quantile: find the bucket holding rank q*count and interpolate linearly inside it
    (the first bucket starts at 0; a rank in the +Inf bucket gives the highest finite bound). None if empty."""
    total = h.buckets[-1][1] if h.buckets else 0.0
    if total <= 0 or not 0.0 <= q <= 1.0:
        return None
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for i, (le, count) in enumerate(h.buckets):
        if count >= rank:
            if math.isinf(le):
                return prev_le if i > 0 else None
            if i == 0 and le <= 0:
                return le
            in_bucket = count - prev_count
            return prev_le + (le - prev_le) * ((rank - prev_count) / in_bucket if in_bucket > 0 else 1.0)
        prev_le, prev_count = le, count
    return prev_le


def _quantiles(h: Histogram | None) -> tuple[float | None, ...] | None:
    if h is None or h.count <= 0:
        return None
    return tuple(histogram_quantile(q, h) for q in QUANTILES)


def _rate(d: float | None, interval: float | None) -> float | None:
    return d / interval if d is not None and interval else None


def _int(v: float | None) -> int | None:
    return None if v is None else round(v)


def _int_label(v: str | None) -> int | None:
    try:
        return int(float(v)) if v is not None else None
    except ValueError:
        return None
