"""MetricsPoller: a thread that scrapes /metrics every `interval` seconds and keeps the latest RemoteSnapshot and
a PollStatus a banner can show ("server unreachable: ... retrying in 4 s"), backing off exponentially while
the server is down or answers garbage, and stopping at 401/403 (retrying does not fix a key).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from nanovllm_tui.remote.client import RemoteClient
from nanovllm_tui.remote.errors import BadResponse, RemoteError, ServerTimeout, ServerUnreachable, Unauthorized
from nanovllm_tui.remote.metrics import MetricsSample, parse_metrics
from nanovllm_tui.remote.snapshot import RemoteSnapshot, build_snapshot

logger = logging.getLogger(__name__)

# PollStatus.state values
CONNECTING, OK, UNREACHABLE, BAD_RESPONSE, UNAUTHORIZED, STOPPED = (
    "connecting",
    "ok",
    "unreachable",
    "bad_response",
    "unauthorized",
    "stopped",
)


@dataclass(frozen=True, slots=True)
class PollStatus:
    """How the last scrape went; `message` is the banner text (None while all is well)."""

    state: str
    message: str | None = None
    retry_in: float | None = None  # seconds until the next try after a failure
    failures: int = 0  # consecutive failed scrapes


Listener = Callable[[PollStatus, RemoteSnapshot | None], None]
MAX_BACKOFF = 30.0  # seconds: the longest wait between tries while the server is down


class MetricsPoller:
    """Scrape on a daemon thread; read `latest`/`status` from any thread, or subscribe() for every poll."""

    def __init__(self, client: RemoteClient, interval: float = 1.0, max_backoff: float = MAX_BACKOFF):
        if not interval > 0:
            raise ValueError(f"--interval {interval} must be > 0 seconds")
        self.client = client
        self.interval = interval
        self.max_backoff = max(max_backoff, interval)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._prev: MetricsSample | None = None
        self._latest: RemoteSnapshot | None = None
        self._status = PollStatus(CONNECTING)
        self._listeners: list[Listener] = []

    @property
    def latest(self) -> RemoteSnapshot | None:
        with self._lock:
            return self._latest

    @property
    def status(self) -> PollStatus:
        with self._lock:
            return self._status

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener(status, latest)` after every scrape (on the poller thread; it must not block)."""
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="remote-metrics", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop polling; returns within about `timeout` (a scrape in flight ends by its own timeout)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._set(PollStatus(STOPPED), None)

    def poll_once(self) -> RemoteSnapshot:
        """Scrape now and return the new snapshot; RemoteError (also recorded in `status`) on failure."""
        try:
            text = self.client.metrics_text()
            try:
                sample = parse_metrics(text, time.monotonic())
            except BadResponse as e:
                raise BadResponse(f"bad response from {self.client.base_url}/metrics: {e}") from None
        except RemoteError as e:
            with self._lock:
                failures = self._status.failures + 1
            self._set(self._failure_status(e, failures), None)
            raise
        snap = build_snapshot(sample, self._prev)
        self._prev = sample
        self._set(PollStatus(OK), snap)
        return snap

    def backoff(self, failures: int) -> float:
        """Seconds to wait after `failures` consecutive failures: interval, doubling, at most max_backoff."""
        return min(self.max_backoff, self.interval * 2 ** max(failures - 1, 0))

    def _failure_status(self, e: RemoteError, failures: int) -> PollStatus:
        if isinstance(e, Unauthorized):
            return PollStatus(UNAUTHORIZED, str(e), None, failures)
        delay = self.backoff(failures)
        if isinstance(e, (ServerUnreachable, ServerTimeout)):
            return PollStatus(UNREACHABLE, f"server unreachable: {e} — retrying in {_seconds(delay)}", delay, failures)
        return PollStatus(BAD_RESPONSE, f"{e} — retrying in {_seconds(delay)}", delay, failures)

    def _set(self, status: PollStatus, snap: RemoteSnapshot | None) -> None:
        with self._lock:
            self._status = status
            if snap is not None:
                self._latest = snap
            latest, listeners = self._latest, list(self._listeners)
        for listener in listeners:
            try:
                listener(status, latest)
            except Exception:  # a broken listener must not stop the polling everyone else relies on
                logger.exception("remote metrics listener failed")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
                wait = self.interval
            except Unauthorized:
                return  # the status says why; a new key needs a new attach
            except RemoteError:
                wait = self.status.retry_in or self.interval
            self._stop.wait(wait)


def _seconds(s: float) -> str:
    return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s".replace(".0 s", " s")
