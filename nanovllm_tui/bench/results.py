"""Result records of benchmark runs (plain dataclasses, JSON-ready via as_dict)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(slots=True)
class OfflineResult:
    """One engine's run over an offline workload; tok/s counts generated (output) tokens, as nano-vllm does."""

    engine: str  # "nanovllm-tui" | "transformers-cb" | "transformers-static"
    num_requests: int
    prompt_tokens: int
    output_tokens: int  # tokens actually generated and kept
    expected_output_tokens: int  # sum of max_tokens (ignore_eos: every request should reach it)
    seconds: float
    num_errors: int = 0
    decode_tok_s_per_request_p50: float | None = None  # (o - 1) / (last token - first token), median
    extra: dict = field(default_factory=dict)

    @property
    def output_tok_s(self) -> float:
        return self.output_tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def total_tok_s(self) -> float:
        return (self.prompt_tokens + self.output_tokens) / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(output_tok_s=self.output_tok_s, total_tok_s=self.total_tok_s)
        return d


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default), None for no values."""
    if not values:
        return None
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass(frozen=True, slots=True)
class Distribution:
    """mean / p50 / p90 / p99 / max of a latency, in milliseconds."""

    mean: float | None
    p50: float | None
    p90: float | None
    p99: float | None
    max: float | None
    count: int

    @classmethod
    def of_seconds(cls, values: list[float]) -> Distribution:
        ms = [v * 1e3 for v in values]
        return cls(
            mean=sum(ms) / len(ms) if ms else None,
            p50=percentile(ms, 50),
            p90=percentile(ms, 90),
            p99=percentile(ms, 99),
            max=max(ms) if ms else None,
            count=len(ms),
        )


@dataclass(slots=True)
class OnlineResult:
    """Serving-benchmark numbers (as vLLM's benchmark_serving): latencies per request, throughput over the run."""

    num_requests: int
    request_rate: float
    policy: str
    duration: float  # first arrival to last finish, seconds
    prompt_tokens: int
    output_tokens: int
    num_errors: int
    ttft: Distribution
    itl: Distribution
    tpot: Distribution  # per request: (e2e - ttft) / (output tokens - 1)
    e2e: Distribution
    mean_in_flight: float  # Little's law: sum of e2e latencies / duration
    mean_running: float | None  # mean num_running over the engine's steps
    max_concurrency: int | None = None
    # bench serve: the client process's CPU time over the run (all its threads), to show it was not the bottleneck
    client_cpu_seconds: float | None = None

    @property
    def request_throughput(self) -> float:
        return self.num_requests / self.duration if self.duration > 0 else 0.0

    @property
    def output_tok_s(self) -> float:
        return self.output_tokens / self.duration if self.duration > 0 else 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(
            request_throughput=self.request_throughput,
            output_tok_s=self.output_tok_s,
            request_rate=None if self.request_rate == float("inf") else self.request_rate,
        )
        return d
