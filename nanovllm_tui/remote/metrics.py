"""Parse a Prometheus /metrics page (prometheus_client's parser) into one MetricsSample: plain values and
histograms, each summed over its label sets (several engines of one vLLM server add up).

Counter names are kept without `_total`, so `vllm:prompt_tokens_total` and an older or hand-rolled exporter's
`vllm:prompt_tokens` are one name. Fraction gauges (KV-cache usage) are averaged over label sets, not summed.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from nanovllm_tui.remote.errors import BadResponse

# Gauges that are fractions per engine: the server's figure is their mean, not their sum.
MEAN_GAUGES = frozenset({"vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "vllm:cpu_cache_usage_perc"})


@dataclass(frozen=True, slots=True)
class Histogram:
    """A Prometheus histogram: cumulative counts per upper bound `le` (sorted, +Inf last), count and sum."""

    buckets: tuple[tuple[float, float], ...]
    count: float
    sum: float

    def since(self, older: Histogram | None) -> Histogram:
        """The observations made after `older` (all of self if there is none or the server restarted)."""
        if older is None or self.count < older.count or [b for b, _ in older.buckets] != [b for b, _ in self.buckets]:
            return self
        before = dict(older.buckets)
        return Histogram(
            tuple((le, c - before[le]) for le, c in self.buckets), self.count - older.count, self.sum - older.sum
        )


@dataclass(frozen=True, slots=True)
class MetricsSample:
    """One scrape: `values` holds gauges and counters, `histograms` the histograms, `info` info-gauge labels."""

    time: float  # time.monotonic() of the scrape
    values: Mapping[str, float]
    histograms: Mapping[str, Histogram]
    info: Mapping[str, Mapping[str, str]]  # e.g. vllm:cache_config_info -> {"block_size": "16", ...}

    def value(self, *names: str) -> float | None:
        """The first of `names` this server exports (current name first, then older ones)."""
        return next((self.values[n] for n in names if n in self.values), None)

    def histogram(self, *names: str) -> Histogram | None:
        return next((self.histograms[n] for n in names if n in self.histograms), None)


def parse_metrics(text: str, time: float) -> MetricsSample:
    """Parse Prometheus text; BadResponse (naming the bad line) if it is not Prometheus text."""
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    hists: dict[str, _HistogramParts] = {}
    info: dict[str, dict[str, str]] = {}
    try:
        for family in text_string_to_metric_families(text):
            if family.type == "histogram":
                parts = hists.setdefault(family.name, _HistogramParts())
                for s in family.samples:
                    parts.add(s.name[len(family.name) :], s.labels, s.value)
                continue
            for s in family.samples:
                if s.name.endswith("_created"):
                    continue  # prometheus_client's creation timestamps, not values
                name = s.name
                if family.type in ("counter", "unknown") and name.endswith("_total"):
                    name = name[: -len("_total")]
                sums[name] += s.value
                counts[name] += 1
                if name.endswith("_info"):
                    info[name] = dict(s.labels)
    except Exception as e:  # the parser raises ValueError, IndexError, ... on garbage
        raise BadResponse(f"not Prometheus text: {_first_line(str(e))}") from None
    values = {n: (v / counts[n] if n in MEAN_GAUGES else v) for n, v in sums.items()}
    histograms = {n: h for n, p in hists.items() if (h := p.build()) is not None}
    return MetricsSample(time, values, histograms, info)


class _HistogramParts:
    """Bucket, count and sum samples of one histogram family, summed over label sets as they arrive."""

    def __init__(self) -> None:
        self.buckets: dict[float, float] = defaultdict(float)
        self.count = 0.0
        self.sum = 0.0
        self.has_count = False

    def add(self, suffix: str, labels: Mapping[str, str], value: float) -> None:
        if suffix == "_bucket" and "le" in labels:
            self.buckets[float(labels["le"])] += value
        elif suffix == "_count":
            self.count += value
            self.has_count = True
        elif suffix == "_sum":
            self.sum += value

    def build(self) -> Histogram | None:
        if not self.buckets or not self.has_count:
            return None
        buckets = sorted(self.buckets.items())
        if buckets[-1][0] != math.inf:  # the exposition format requires +Inf; its count is the total
            buckets.append((math.inf, self.count))
        return Histogram(tuple(buckets), self.count, self.sum)


def _first_line(text: str) -> str:
    line = text.splitlines()[0] if text else "unparsable"
    return line[:120] + ("…" if len(line) > 120 else "")
