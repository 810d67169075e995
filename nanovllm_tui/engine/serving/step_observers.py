"""StepObservers: what a service keeps for its watchers — recent StepStats, events, and stats subscribers.

Shared by EngineService (engine on a thread) and ProcessEngineService (engine in a child process), which
both publish steps into one of these and expose its reads as their own methods.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Container
from dataclasses import dataclass
from itertools import count
from typing import TYPE_CHECKING

from nanovllm_tui.engine.config import POLICIES
from nanovllm_tui.engine.stats import EngineStats, StepStats

if TYPE_CHECKING:
    from nanovllm_tui.engine.serving.protocol import EngineInfo
    from nanovllm_tui.engine.serving.service_setup import RequestChecker


@dataclass(frozen=True, slots=True)
class ServiceEvent:
    """Something the UI should hear about: "step_error" (a step failed, the service goes on), "fatal"
    (the service stopped) or "listener_error" (a stats subscriber raised)."""

    kind: str
    time: float
    message: str
    request_ids: tuple[str, ...] = ()
    traceback: str | None = None


class StepObservers:
    """A ring of recent steps and events plus subscribers; reads never block the publishing thread."""

    def __init__(self, history_size: int = 2048, max_events: int = 256):
        self._history: deque[StepStats] = deque(maxlen=history_size)
        self._events: deque[ServiceEvent] = deque(maxlen=max_events)
        self._listeners: tuple[Callable[[StepStats], None], ...] = ()
        self._lock = threading.Lock()  # subscribe/unsubscribe only; publishing reads the tuple as is

    def history(self, since_step: int | None = None) -> list[StepStats]:
        """Recent StepStats, oldest first (only steps after `since_step` if given)."""
        history = self._history.copy()
        if since_step is None:
            return list(history)
        return [s for s in history if s.step > since_step]

    def events(self) -> list[ServiceEvent]:
        return list(self._events.copy())

    def add_event(self, event: ServiceEvent) -> None:
        self._events.append(event)

    def subscribe(self, listener: Callable[[StepStats], None]) -> Callable[[], None]:
        """Add a listener; returns the function that removes it."""
        with self._lock:
            self._listeners = (*self._listeners, listener)

        def unsubscribe() -> None:
            with self._lock:
                self._listeners = tuple(fn for fn in self._listeners if fn is not listener)

        return unsubscribe

    def publish(self, step: StepStats) -> None:
        """Record a step and hand it to every listener; a listener that raises becomes an event, nothing more."""
        self._history.append(step)
        for listener in self._listeners:
            try:
                listener(step)
            except Exception as exc:  # a broken subscriber must not stop the engine (or the reader)
                self._events.append(ServiceEvent("listener_error", time.monotonic(), f"{type(exc).__name__}: {exc}"))


class ObservedService:
    """What both services share (each inherits it): reads of `_stats` (the latest EngineStats), `_fatal`,
    `_observers` and `_info`, which the service keeps current, and the caller-thread request checks."""

    _observers: StepObservers
    _stats: EngineStats
    _fatal: str | None
    _info: EngineInfo
    _checker: RequestChecker
    _ids: count[int]

    def engine_info(self) -> EngineInfo:
        """What engine this service runs (fixed for its lifetime; the policy is the one it started with)."""
        return self._info

    def tokenize(self, text: str) -> list[int]:
        """The model's token ids of `text` (no special tokens added); ValueError if it can't be tokenized."""
        return self._checker.tokenize(text)

    def _request_id(self, request_id: str | None, live: Container[str]) -> str:
        """The caller's id if no live request holds it (ValueError if one does), else a fresh one."""
        if request_id is None:
            request_id = f"req-{next(self._ids)}"
            while request_id in live:
                request_id = f"req-{next(self._ids)}"
        # Checked here, in the caller's thread, for both services (the engine process would only end it "error").
        elif not isinstance(request_id, str) or not request_id:
            raise ValueError(f"request_id must be a non-empty string or None, got {request_id!r}")
        elif request_id in live:
            raise ValueError(f"request_id {request_id!r} is already in use; pass a unique id or None")
        return request_id

    @staticmethod
    def _check_policy(policy: str) -> None:
        if policy not in POLICIES:
            raise ValueError(f"scheduling policy {policy!r}; choose one of {', '.join(POLICIES)}")

    def stats(self) -> EngineStats:
        """Cumulative counters as of the last step the service has seen."""
        return self._stats

    @property
    def fatal_error(self) -> str | None:
        return self._fatal

    def stats_history(self, since_step: int | None = None) -> list[StepStats]:
        """Recent StepStats, oldest first (only steps after `since_step` if given)."""
        return self._observers.history(since_step)

    def events(self) -> list[ServiceEvent]:
        """Recent step errors and the fatal error, if any, oldest first."""
        return self._observers.events()

    def subscribe(self, listener: Callable[[StepStats], None]) -> Callable[[], None]:
        """Call `listener(step_stats)` for every step, on the service's engine or reader thread: it must not
        block (use Textual's post_message, not call_from_thread). Returns an unsubscribe function."""
        return self._observers.subscribe(listener)
