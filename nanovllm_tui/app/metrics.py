"""One-line summaries of a finished request's timings (for the chat's per-message metrics line)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nanovllm_tui.engine.serving.request_handle import RequestMetrics


def decode_rate(metrics: RequestMetrics) -> float | None:
    """Generated tokens per second after the first one (None with fewer than two tokens)."""
    times = metrics.token_times
    if len(times) < 2 or times[-1] <= times[0]:
        return None
    return (len(times) - 1) / (times[-1] - times[0])


def metrics_line(metrics: RequestMetrics, finish_reason: str | None) -> str:
    """TTFT, tok/s, tokens, prompt tokens from the prefix cache, times preempted (and why it ended, if unusual)."""
    parts = []
    ttft = metrics.time_to_first_token
    parts.append(f"TTFT {ttft * 1000:.0f} ms" if ttft is not None else "TTFT –")
    rate = decode_rate(metrics)
    parts.append(f"{rate:.1f} tok/s" if rate is not None else "– tok/s")
    parts.append(f"{metrics.num_generation_tokens} tokens")
    parts.append(f"{metrics.num_cached_tokens}/{metrics.num_prompt_tokens} prompt tokens cached")
    parts.append(f"preempted {metrics.num_preemptions}×")
    if finish_reason == "abort":
        parts.append("stopped")
    elif finish_reason == "length":
        parts.append("hit max_tokens")
    return " · ".join(parts)
