"""HistoryWriter: every store call runs on one background thread, in submission order, so the UI never waits
on the disk. Calls return futures; a failed write is reported (once per failure) instead of raised in the UI."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout  # not the builtin before Python 3.11
from typing import TypeVar

from nanovllm_tui.app.history.store import HistoryStore

T = TypeVar("T")
_Job = tuple[Callable[[HistoryStore], object], Future]


class HistoryClosed(RuntimeError):
    """The writer was closed; nothing more is written."""


class HistoryWriter:
    """Owns a HistoryStore and the thread that uses it (SQLite connections are not shared between threads)."""

    def __init__(self, store: HistoryStore):
        self.store = store
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._errors: list[str] = []  # one line per failed call, not yet taken by the UI
        self.num_failed = 0
        self._thread = threading.Thread(target=self._run, name="history-writer", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[HistoryStore], T]) -> Future[T]:
        """Run fn(store) on the writer thread after everything submitted before it."""
        future: Future[T] = Future()
        with self._lock:
            if self._closed:
                future.set_exception(HistoryClosed("the history writer is closed"))
                return future
            self._queue.put((fn, future))
        return future

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything submitted so far has run; False if that took longer than `timeout`."""
        try:
            self.submit(lambda store: None).result(timeout)
        except HistoryClosed:
            return not self._thread.is_alive()
        except FutureTimeout:
            return False
        return True

    def take_errors(self) -> list[str]:
        """Failures since the last call, one line each (the app shows them as notifications)."""
        with self._lock:
            errors, self._errors = self._errors, []
        return errors

    def close(self, timeout: float = 5.0) -> bool:
        """Finish the queued writes, close the database; False if the thread did not end within `timeout`."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        try:
            while (job := self._queue.get()) is not None:
                fn, future = job
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    future.set_result(fn(self.store))
                except Exception as exc:
                    with self._lock:
                        self.num_failed += 1
                        self._errors.append(" ".join(str(exc).split()) or type(exc).__name__)
                    future.set_exception(exc)
        finally:
            self.store.close()
