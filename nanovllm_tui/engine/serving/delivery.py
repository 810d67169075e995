"""Handing engine outputs to RequestHandles, as both services do: reasoning split off the text, timings copied
into the handle's metrics, and the final output that ends a request the engine can no longer finish."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nanovllm_tui.engine.outputs import RequestOutput
from nanovllm_tui.engine.serving.request_handle import RequestHandle
from nanovllm_tui.engine.text.reasoning import ReasoningSplitter

if TYPE_CHECKING:
    from nanovllm_tui.engine.scheduling.sequence import Sequence

SHUTDOWN = "the engine service was shut down before this request finished"


@dataclass(slots=True)
class Live:
    """A service's bookkeeping for one live request (seq: the engine's Sequence, thread service only)."""

    handle: RequestHandle
    splitter: ReasoningSplitter | None = None
    seq: Sequence | None = None


def split_reasoning(splitter: ReasoningSplitter | None, out: RequestOutput) -> None:
    """Route the <think> part of `out.text` to `out.reasoning` (in place); the final delta flushes the rest."""
    if splitter is None:
        return
    out.text, out.reasoning = splitter.feed(out.text)
    if out.finished:
        text, reasoning = splitter.flush()
        out.text += text
        out.reasoning += reasoning


def copy_seq_metrics(live: Live, out: RequestOutput, now: float) -> None:
    """The handle's metrics as of this delta, from the engine's Sequence (thread service)."""
    m, seq = live.handle.metrics, live.seq
    if seq is not None:
        m.num_cached_tokens = seq.num_cached_tokens
        m.num_preemptions = seq.num_preemptions
        m.first_token_time = seq.first_token_time
        if out.token_ids:
            m.token_times.extend(seq.token_times[len(m.token_times) :])
    if out.finished:
        m.finished_time = now


def end_handle(handle: RequestHandle, reason: str, error: str | None) -> None:
    """Finish a request from outside the engine (shutdown, a dead engine); no-op if it already ended."""
    if handle.metrics.finished_time is None:
        handle.metrics.finished_time = time.monotonic()
    handle._put(RequestOutput(handle.request_id, finished=True, finish_reason=reason, error=error))
