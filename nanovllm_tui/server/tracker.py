"""RequestTracker: the HTTP requests in flight and the recently finished ones, for the watch view and the headless
log. Written by each request's reader thread, read by the UI timer; every method may be called from any thread."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class RequestRecord:
    """One HTTP request as the server saw it (times are time.monotonic seconds)."""

    request_id: str
    kind: str  # "chat" | "completion"
    arrival_time: float
    prompt_tokens: int = 0
    output_tokens: int = 0
    stream: bool = False
    state: str = "waiting"  # waiting (no token yet), running, then the finish reason: stop, length, abort, error
    first_token_time: float | None = None
    finished_time: float | None = None
    error: str | None = None

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time

    @property
    def e2e(self) -> float | None:
        return None if self.finished_time is None else self.finished_time - self.arrival_time

    def log_line(self) -> str:
        """The headless log's line for a finished request."""
        ttft = "-" if self.ttft is None else f"{self.ttft:.3f}s"
        e2e = "-" if self.e2e is None else f"{self.e2e:.3f}s"
        line = (
            f"{self.request_id} {self.kind} status={self.state} prompt_tokens={self.prompt_tokens} "
            f"output_tokens={self.output_tokens} ttft={ttft} e2e={e2e}"
        )
        if self.error:
            line += f" error={' '.join(self.error.split())}"
        return line


class RequestTracker:
    """Live records by id plus a bounded log of finished ones; `on_finish` listeners get each finished record."""

    def __init__(self, max_recent: int = 200):
        self._lock = threading.Lock()
        self._live: dict[str, RequestRecord] = {}
        self._recent: deque[RequestRecord] = deque(maxlen=max_recent)
        self._num_finished = 0
        self._listeners: list[Callable[[RequestRecord], None]] = []

    def on_finish(self, listener: Callable[[RequestRecord], None]) -> None:
        """Call `listener(record)` on the request's reader thread when a request finishes (it must not block)."""
        with self._lock:
            self._listeners.append(listener)

    def start(self, record: RequestRecord) -> None:
        with self._lock:
            self._live[record.request_id] = record

    def tokens(self, request_id: str, count: int, first_token_time: float | None) -> None:
        """`count` more output tokens arrived for a live request."""
        with self._lock:
            record = self._live.get(request_id)
            if record is None:
                return
            record.output_tokens += count
            if record.first_token_time is None and count:
                record.first_token_time = first_token_time if first_token_time is not None else time.monotonic()
            if count:
                record.state = "running"

    def finish(self, request_id: str, reason: str, error: str | None, finished_time: float | None) -> None:
        with self._lock:
            record = self._live.pop(request_id, None)
            if record is None:
                return
            record.state = reason
            record.error = error
            record.finished_time = finished_time if finished_time is not None else time.monotonic()
            self._recent.append(record)
            self._num_finished += 1
            listeners = list(self._listeners)
            done = dataclasses.replace(record)
        for listener in listeners:
            listener(done)

    def in_flight(self) -> list[RequestRecord]:
        """Copies of the live records, oldest first."""
        with self._lock:
            return [dataclasses.replace(r) for r in self._live.values()]

    def finished_since(self, seen: int) -> tuple[list[RequestRecord], int]:
        """Records finished after the first `seen` (those still in the bounded log) and the new count."""
        with self._lock:
            new = min(self._num_finished - seen, len(self._recent))
            records = [dataclasses.replace(r) for r in list(self._recent)[len(self._recent) - new :]] if new else []
            return records, self._num_finished

    @property
    def num_finished(self) -> int:
        return self._num_finished
