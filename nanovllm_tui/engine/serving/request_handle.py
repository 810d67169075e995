"""RequestHandle: the caller's end of one streaming request (deltas, final result, timings).

Readers: one thread at a time consumes the deltas (iterating, get() or drain()); a second thread that tries
while another is reading gets a RuntimeError at once instead of waiting forever for deltas the first one took.
result() is not a reader: it waits for the request to end and may be called from any thread, any number of
times. The service always delivers a final output (finished, abort or error), so result() always returns.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from nanovllm_tui.engine.outputs import RequestOutput


@dataclass
class RequestMetrics:
    """One request's timings (time.monotonic seconds) and cache use; written by the engine thread as it runs."""

    arrival_time: float
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache
    num_preemptions: int = 0
    first_token_time: float | None = None
    token_times: list[float] = field(default_factory=list)  # when each generated token was sampled
    finished_time: float | None = None

    @property
    def time_to_first_token(self) -> float | None:
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time

    @property
    def inter_token_latencies(self) -> list[float]:
        return [b - a for a, b in itertools.pairwise(list(self.token_times))]

    @property
    def num_generation_tokens(self) -> int:
        return len(self.token_times)

    @property
    def e2e_latency(self) -> float | None:
        return None if self.finished_time is None else self.finished_time - self.arrival_time


class RequestHandle:
    """Iterate for RequestOutput deltas (blocking), or drain() them without blocking (for a UI timer).

    The handle also accumulates what its reader has consumed: `text`, `reasoning`, `token_ids`,
    `finish_reason`, `error`. `result()` waits for the end and returns the whole output.
    """

    def __init__(self, request_id: str, metrics: RequestMetrics, abort: Callable[[str], bool]):
        self.request_id = request_id
        self.metrics = metrics
        self._abort = abort
        self._queue: queue.SimpleQueue[RequestOutput] = queue.SimpleQueue()
        self._lock = threading.Lock()  # producer side: _closed and _outputs
        self._closed = False  # the final output has been put (producer side)
        self._outputs: list[RequestOutput] = []  # every delta put, for result()
        self._ended = threading.Event()  # set with _closed
        self._reader_lock = threading.Lock()  # guards the two fields below
        self._reader: int | None = None  # thread ident of the reader now, if any
        self._reader_depth = 0
        self.finished = False  # the final output has been consumed (reader side)
        self.finish_reason: str | None = None
        self.error: str | None = None
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self.token_ids: list[int] = []

    # -- producer side (engine thread, or shutdown) ---------------------------------------------
    def _put(self, out: RequestOutput) -> bool:
        """Deliver one delta; anything after the final output is dropped. False if dropped."""
        with self._lock:
            if self._closed:
                return False
            self._closed = out.finished
            self._outputs.append(out)
            self._queue.put(out)
        if out.finished:
            self._ended.set()
        return True

    @property
    def done(self) -> bool:
        """The request has finished (its final output is queued, maybe not yet read)."""
        return self._closed

    # -- reader side ---------------------------------------------------------------------------
    def _enter_reader(self, strict: bool = True) -> bool:
        """Become this handle's reader (re-entrant per thread). Another thread reading: RuntimeError, or False
        when not strict."""
        me = threading.get_ident()
        with self._reader_lock:
            if self._reader is not None and self._reader != me:
                if not strict:
                    return False
                raise RuntimeError(
                    f"request {self.request_id!r} is already being read by another thread; "
                    "use one reader per handle (result() may be called from any thread)"
                )
            self._reader = me
            self._reader_depth += 1
        return True

    def _leave_reader(self) -> None:
        with self._reader_lock:
            self._reader_depth -= 1
            if self._reader_depth == 0:
                self._reader = None

    def _consume(self, out: RequestOutput) -> RequestOutput:
        if out.text:
            self._text.append(out.text)
        if out.reasoning:
            self._reasoning.append(out.reasoning)
        self.token_ids.extend(out.token_ids)
        if out.finished:
            self.finished, self.finish_reason, self.error = True, out.finish_reason, out.error
        return out

    def get(self, timeout: float | None = None) -> RequestOutput | None:
        """The next delta, blocking up to `timeout` seconds; None on timeout or once finished."""
        self._enter_reader()
        try:
            if self.finished:
                return None
            return self._consume(self._queue.get(timeout=timeout))
        except queue.Empty:
            return None
        finally:
            self._leave_reader()

    def __iter__(self) -> Iterator[RequestOutput]:
        self._enter_reader()
        try:
            while not self.finished:
                yield self._consume(self._queue.get())
        finally:
            self._leave_reader()

    def drain(self) -> list[RequestOutput]:
        """Every delta available now, without blocking."""
        self._enter_reader()
        try:
            return self._drain()
        finally:
            self._leave_reader()

    def _drain(self) -> list[RequestOutput]:
        outs = []
        while not self.finished:
            try:
                outs.append(self._consume(self._queue.get_nowait()))
            except queue.Empty:
                break
        return outs

    def result(self, timeout: float | None = None) -> RequestOutput:
        """Wait for the end (any thread) and return the whole output as one RequestOutput.

        When no other thread is reading, the deltas left are consumed too (so `text`, `finished`... are final)."""
        if not self._ended.wait(timeout):
            raise TimeoutError(f"request {self.request_id!r} did not finish within {timeout} s")
        if self._enter_reader(strict=False):
            try:
                self._drain()
            finally:
                self._leave_reader()
        with self._lock:
            outs = list(self._outputs)
        last = outs[-1]
        return RequestOutput(
            self.request_id,
            "".join(o.text for o in outs),
            [t for o in outs for t in o.token_ids],
            "".join(o.reasoning for o in outs),
            True,
            last.finish_reason,
            last.error,
        )

    @property
    def text(self) -> str:
        return "".join(self._text)

    @property
    def reasoning(self) -> str:
        return "".join(self._reasoning)

    def abort(self) -> bool:
        """Ask the service to abort this request (see EngineService.abort)."""
        return self._abort(self.request_id)

    def __repr__(self) -> str:
        return f"RequestHandle({self.request_id!r}, done={self.done}, finish_reason={self.finish_reason!r})"
