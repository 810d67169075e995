"""Benchmark workloads: nano-vllm's offline bench (random token ids) and Poisson arrival times for the online bench.

Pure Python and deterministic for a seed, so the app's bench screen and the CLI build the same requests.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# nano-vllm's bench.py: 256 requests, prompt and output lengths uniform in [100, 1024], ids uniform in [0, 10000].
DEFAULT_NUM_REQUESTS = 256
DEFAULT_PROMPT_LEN_RANGE = (100, 1024)
DEFAULT_OUTPUT_LEN_RANGE = (100, 1024)
DEFAULT_MAX_TOKEN_ID = 10000
DEFAULT_SEED = 0
DEFAULT_TEMPERATURE = 0.6  # nano-vllm samples at 0.6: sampling cost is part of the measured time


@dataclass(frozen=True, slots=True)
class BenchRequest:
    """One benchmark request: prompt token ids and how many tokens to generate (EOS is ignored)."""

    prompt_token_ids: tuple[int, ...]
    max_tokens: int

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_token_ids)


def _check_range(name: str, rng: tuple[int, int]) -> tuple[int, int]:
    lo, hi = int(rng[0]), int(rng[1])
    if lo < 1 or hi < lo:
        raise ValueError(f"{name}={rng!r} must be (low, high) with 1 <= low <= high, e.g. (100, 1024)")
    return lo, hi


def make_offline_workload(
    num_requests: int = DEFAULT_NUM_REQUESTS,
    prompt_len_range: tuple[int, int] = DEFAULT_PROMPT_LEN_RANGE,
    output_len_range: tuple[int, int] = DEFAULT_OUTPUT_LEN_RANGE,
    seed: int = DEFAULT_SEED,
    max_token_id: int = DEFAULT_MAX_TOKEN_ID,
) -> list[BenchRequest]:
    """nano-vllm's bench workload: all prompts drawn first, then all max_tokens, from one seeded stream.

    With the defaults this is exactly nano-vllm's 256 requests (133,966 output tokens).
    """
    if num_requests < 1:
        raise ValueError(f"num_requests={num_requests} must be >= 1")
    p_lo, p_hi = _check_range("prompt_len_range", prompt_len_range)
    o_lo, o_hi = _check_range("output_len_range", output_len_range)
    if max_token_id < 0:
        raise ValueError(f"max_token_id={max_token_id} must be >= 0")
    # nano-vllm seeds the module-level generator with random.seed(0); a private Random(0) draws the same
    # numbers without touching global state.
    rng = random.Random(seed)
    prompts = [[rng.randint(0, max_token_id) for _ in range(rng.randint(p_lo, p_hi))] for _ in range(num_requests)]
    max_tokens = [rng.randint(o_lo, o_hi) for _ in range(num_requests)]
    return [BenchRequest(tuple(p), n) for p, n in zip(prompts, max_tokens)]


def poisson_arrivals(num_requests: int, request_rate: float, seed: int = DEFAULT_SEED) -> list[float]:
    """Arrival offsets in seconds (first at 0) with exponential gaps of mean 1/rate; rate=inf sends all at once."""
    if not request_rate > 0:
        raise ValueError(f"request_rate={request_rate} must be > 0 requests/s (inf = all at once)")
    if request_rate == float("inf"):
        return [0.0] * num_requests
    rng = random.Random(seed)
    t, times = 0.0, []
    for _ in range(num_requests):
        times.append(t)
        t += rng.expovariate(request_rate)
    return times


def total_output_tokens(workload: list[BenchRequest]) -> int:
    return sum(r.max_tokens for r in workload)


def total_prompt_tokens(workload: list[BenchRequest]) -> int:
    return sum(r.prompt_len for r in workload)
