"""ArrivalDriver: the one place that sends a workload's requests at their arrival times, at most N in flight.

It knows nothing of engines or HTTP: a `submit(i)` callable starts request i and returns a handle (anything with
`done` and `abort()`). The in-process LoadDriver (bench/driver.py) submits to a Service; `bench serve`
(bench/http_load.py) opens one streamed HTTP request per call. Whoever finishes a request calls
notify_finished(), so a request waiting for a slot goes out at once instead of at the next poll.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Generic, Protocol, TypeVar


class Pending(Protocol):
    """A submitted request as the driver sees it."""

    @property
    def done(self) -> bool: ...

    def abort(self) -> object: ...


H = TypeVar("H", bound=Pending)


class ArrivalDriver(Generic[H]):
    """Submits request i at arrivals[i] seconds after start() from a small thread; tracks the handles."""

    def __init__(
        self,
        submit: Callable[[int], H],
        arrivals: Sequence[float],
        *,
        max_concurrency: int | None = None,
        run_id: str = "bench",
        batch: Callable[[], AbstractContextManager[object]] | None = None,
        on_submit: Callable[[int, H], None] | None = None,
    ):
        """submit(i) raises ValueError or RuntimeError when the target refuses request i (the run then stops
        submitting and keeps the message in submit_error). batch(): a context manager around the requests that
        go out together (their arrival time has come), so a service can start them in one step."""
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError(f"max_concurrency={max_concurrency} must be >= 1 (or None for no limit)")
        self.arrivals = list(arrivals)
        self.max_concurrency = max_concurrency
        self.run_id = run_id
        self.on_submit = on_submit
        self.handles: list[H] = []
        self.start_time: float | None = None
        self.end_time: float | None = None  # set by poll() once every request finished
        self.submit_error: str | None = None
        self._submit_one = submit
        self._batch = batch if batch is not None else contextlib.nullcontext
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._slot_freed = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def total(self) -> int:
        return len(self.arrivals)

    def start(self) -> None:
        """Begin submitting (returns at once)."""
        self.start_time = start = time.monotonic()
        self._thread = threading.Thread(
            target=self._submit_all, args=(start,), name=f"{self.run_id}-submit", daemon=True
        )
        self._thread.start()

    def notify_finished(self) -> None:
        """A request ended (any thread; must not block): wake a submission waiting for a slot."""
        self._slot_freed.set()

    def _in_flight(self) -> int:
        with self._lock:
            return sum(not h.done for h in self.handles)

    def _wait_for_slot(self) -> bool:
        """Block while max_concurrency requests are in flight; False if stopped meanwhile."""
        while self.max_concurrency and self._in_flight() >= self.max_concurrency:
            # Bounded wait: a request may end just before its handle reports done.
            self._slot_freed.wait(0.05)
            self._slot_freed.clear()
            if self._stop.is_set():
                return False
        return True

    def _submit_all(self, start: float) -> None:
        n, i = self.total, 0
        while i < n:
            if self._stop.wait(max(0.0, start + self.arrivals[i] - time.monotonic())) or not self._wait_for_slot():
                return
            # Every request whose time has come (and that fits under max_concurrency) goes out in one batch, so
            # "all at once" starts them in one engine step, as LLM.generate would.
            now, j = time.monotonic(), i + 1
            room = self.max_concurrency - self._in_flight() if self.max_concurrency else n
            while j < n and j - i < room and start + self.arrivals[j] <= now:
                j += 1
            with self._batch():
                if not all(self._submit(k) for k in range(i, j)):
                    return
            i = j

    def _submit(self, i: int) -> bool:
        """Submit request i; False (and submit_error set) if the target refuses it."""
        try:
            handle = self._submit_one(i)
        except (ValueError, RuntimeError) as exc:
            self.submit_error = str(exc)
            return False
        with self._lock:
            self.handles.append(handle)
        if self.on_submit is not None:
            self.on_submit(i, handle)
        return True

    @property
    def submitted_all(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()

    @property
    def done(self) -> bool:
        """Submission ended and every submitted request finished."""
        submitted = self.submitted_all
        with self._lock:
            return submitted and all(h.done for h in self.handles)

    @property
    def num_finished(self) -> int:
        with self._lock:
            return sum(1 for h in self.handles if h.done)

    def poll(self) -> None:
        """Non-blocking: consume what the handles hold (_consume) and mark the end once every request finished."""
        done = self.done
        self._consume()
        if done and self.end_time is None:
            self.end_time = time.monotonic()
            self._release()

    def _consume(self) -> None:
        """Subclasses: read what the handles hold (called by poll)."""

    def _release(self) -> None:
        """Subclasses: let go of what the run holds (called once, at the end or on a timeout)."""

    def stop(self) -> None:
        """Stop submitting and abort what is in flight."""
        self._stop.set()
        with self._lock:
            handles = list(self.handles)
        for h in handles:
            if not h.done:
                h.abort()

    def wait(
        self, timeout: float = 600.0, interval: float = 0.05, on_progress: Callable[[int], None] | None = None
    ) -> None:
        """Poll until done (scripts and tests without a UI); on_progress gets the finished count."""
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            if on_progress is not None:
                on_progress(self.num_finished)
            if self.end_time is not None:
                return
            if time.monotonic() > deadline:
                self.stop()
                self._release()
                raise TimeoutError(f"the workload did not finish within {timeout} s")
            time.sleep(interval)
