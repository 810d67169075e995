"""RequestHandle: the caller's end of one streaming request (deltas, final result, timings)."""

from __future__ import annotations

import queue
import threading
import time
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
        t = list(self.token_times)
        return [b - a for a, b in zip(t, t[1:])]

    @property
    def num_generation_tokens(self) -> int:
        return len(self.token_times)

    @property
    def e2e_latency(self) -> float | None:
        return None if self.finished_time is None else self.finished_time - self.arrival_time


class RequestHandle:
    """Iterate for RequestOutput deltas (blocking), or drain() them without blocking (for a UI timer).

    The handle also accumulates what its reader has consumed: `text`, `reasoning`, `token_ids`,
    `finish_reason`, `error`; `result()` consumes the rest and returns the whole output.
    """

    def __init__(self, request_id: str, metrics: RequestMetrics, abort: Callable[[str], bool]):
        self.request_id = request_id
        self.metrics = metrics
        self._abort = abort
        self._queue: queue.SimpleQueue[RequestOutput] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False  # the final output has been put (producer side)
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
            self._queue.put(out)
            return True

    @property
    def done(self) -> bool:
        """The request has finished (its final output is queued, maybe not yet read)."""
        return self._closed

    # -- reader side ---------------------------------------------------------------------------
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
        if self.finished:
            return None
        try:
            return self._consume(self._queue.get(timeout=timeout))
        except queue.Empty:
            return None

    def __iter__(self) -> Iterator[RequestOutput]:
        while not self.finished:
            yield self._consume(self._queue.get())

    def drain(self) -> list[RequestOutput]:
        """Every delta available now, without blocking."""
        outs = []
        while not self.finished:
            try:
                outs.append(self._consume(self._queue.get_nowait()))
            except queue.Empty:
                break
        return outs

    def result(self, timeout: float | None = None) -> RequestOutput:
        """Wait for the end and return everything the reader has consumed as one RequestOutput."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.finished:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"request {self.request_id!r} did not finish within {timeout} s")
            self.get(timeout=left)
        return RequestOutput(
            self.request_id, self.text, list(self.token_ids), self.reasoning, True, self.finish_reason, self.error
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
