"""StatsWindow: the StepStats drained from the service, kept as bounded series for the dashboard (no UI code)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nanovllm_tui.engine.stats import BlockMap, EngineStats, StepStats

if TYPE_CHECKING:
    from nanovllm_tui.engine.serving.request_handle import RequestHandle


@dataclass(frozen=True, slots=True)
class PreemptionEvent:
    wall_time: float
    step: int
    request_id: str


class StatsWindow:
    """Recent steps (bounded) plus the cumulative counters; `add` takes whatever the service's ring buffer holds."""

    def __init__(self, maxlen: int = 240, max_events: int = 100):
        self.steps: deque[StepStats] = deque(maxlen=maxlen)
        self.events: deque[PreemptionEvent] = deque(maxlen=max_events)
        self.totals: EngineStats | None = None
        self.block_map: BlockMap | None = None
        self.policy: str | None = None
        self._last_start = float("-inf")
        self.last_step: int | None = None  # pass to stats_history(since_step=...) to read only new steps
        self.num_seen = 0
        # Requests the app submitted that have not finished (set by the app): a step reports its counts only
        # when it ends, so during a long first prefill the last step would still say nothing runs.
        self.live_requests: int | None = None

    def set_live(self, handles: Iterable[RequestHandle]) -> bool:
        """Count the app's requests not finished yet; True if that changed (the dashboards need a redraw)."""
        live = sum(not h.done for h in handles)
        changed = live != self.live_requests
        self.live_requests = live
        return changed

    def running_waiting(self) -> tuple[int, int]:
        """(running, waiting) now: the last step's figures, bounded by the live requests when those are known.

        Requests submitted since that step are counted as waiting (no step has taken them yet, as far as the app
        can tell); requests finished since then are no longer counted at all."""
        latest = self.latest
        running = latest.num_running if latest else 0
        waiting = latest.num_waiting if latest else 0
        if self.live_requests is None:
            return running, waiting
        running = min(running, self.live_requests)
        return running, self.live_requests - running

    def add(self, history: Iterable[StepStats], totals: EngineStats | None = None) -> int:
        """Append the steps not seen yet (the buffer is re-read each tick); returns how many were new."""
        new = [s for s in history if s.start_time > self._last_start]
        offset = time.time() - time.monotonic()  # StepStats times are monotonic; the log shows wall clock
        for s in new:
            self.steps.append(s)
            self._last_start = s.start_time
            self.last_step = s.step
            self.policy = s.policy
            if s.block_map is not None:
                self.block_map = s.block_map
            for rid in s.preempted_request_ids:
                self.events.append(PreemptionEvent(s.start_time + offset, s.step, rid))
        self.num_seen += len(new)
        if totals is not None:
            self.totals = totals
        return len(new)

    @property
    def latest(self) -> StepStats | None:
        return self.steps[-1] if self.steps else None

    def series(self, name: str) -> list[float]:
        return [float(getattr(s, name)) for s in self.steps]

    def hit_rate_series(self) -> list[float]:
        """Prefix-cache hit rate of each step that looked anything up."""
        return [s.prefix_cache_hits / s.prefix_cache_queries for s in self.steps if s.prefix_cache_queries]

    def rates(self, now: float | None = None, window: float = 2.0) -> tuple[float, float]:
        """(prefill, decode) tokens per second over the last `window` seconds of steps; 0 when idle."""
        now = time.monotonic() if now is None else now
        recent = [s for s in self.steps if s.start_time >= now - window]
        if not recent:
            return 0.0, 0.0
        span = max(now - recent[0].start_time, recent[-1].start_time + recent[-1].duration - recent[0].start_time)
        if span <= 0:
            return 0.0, 0.0
        return (sum(s.num_prefill_tokens for s in recent) / span, sum(s.num_decode_tokens for s in recent) / span)
