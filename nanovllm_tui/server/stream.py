"""RequestStream: one request's RequestHandle read on a thread of its own, its outputs handed to the event loop.

The handle is a blocking queue with one reader, so each request gets a reader thread that never touches the event
loop except through call_soon_threadsafe. The reader also does the request's accounting (metrics, tracker), so it
is complete even when the HTTP client has gone. The reader ends when the request does, and the services always
finish every request (shutdown and a dead engine end them with "abort" / "error"), so no thread is left behind.

SSEResponse (sse-starlette's EventSourceResponse) aborts its request whenever the response ends before the request
did (the client disconnected, or sending failed), so an abandoned request frees its KV blocks at the engine's next
step. Events are framed as OpenAI and vLLM frame them: `data: {json}`, a blank line, `data: [DONE]` last, no pings.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request
from sse_starlette import EventSourceResponse, JSONServerSentEvent, ServerSentEvent
from starlette.types import Receive, Scope, Send

from nanovllm_tui.engine.outputs import RequestOutput
from nanovllm_tui.engine.serving.request_handle import RequestHandle
from nanovllm_tui.server.metrics import ServerMetrics
from nanovllm_tui.server.tracker import RequestTracker

READ_TIMEOUT_S = 1.0  # the reader's wait per get(): only bounds each wait, the request ends it
DISCONNECT_POLL_S = 0.25  # how often a non-streaming request checks that its client is still there
SEP = "\n"  # OpenAI and vLLM end lines with \n (sse-starlette's default is \r\n)


def json_event(payload: dict[str, Any]) -> ServerSentEvent:
    """One server-sent event carrying `payload` as compact JSON."""
    return JSONServerSentEvent(payload, sep=SEP)


def done_event() -> ServerSentEvent:
    """The `data: [DONE]` event that ends an OpenAI stream."""
    return ServerSentEvent("[DONE]", sep=SEP)


class RequestStream:
    """The outputs of one submitted request, as an async iterator on the event loop that created it."""

    def __init__(self, handle: RequestHandle, metrics: ServerMetrics, tracker: RequestTracker):
        self.handle = handle
        self._metrics = metrics
        self._tracker = tracker
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[RequestOutput] = asyncio.Queue()
        self._seen_first = False
        self._thread = threading.Thread(target=self._read, name=f"serve-{handle.request_id}", daemon=True)
        self._thread.start()

    # -- the reader thread ---------------------------------------------------------------------
    def _read(self) -> None:
        while not self.handle.finished:
            out = self.handle.get(timeout=READ_TIMEOUT_S)
            if out is None:
                continue
            self._account(out)
            # RuntimeError: the event loop has closed (server stopping); keep reading to account the end.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._queue.put_nowait, out)

    def _account(self, out: RequestOutput) -> None:
        m = self.handle.metrics
        first = bool(out.token_ids) and not self._seen_first
        self._seen_first = self._seen_first or first
        self._metrics.on_tokens(len(out.token_ids), first, m.num_prompt_tokens)
        self._tracker.tokens(out.request_id, len(out.token_ids), m.first_token_time)
        if out.finished:
            self._metrics.on_finish(m, out.finish_reason)
            self._tracker.finish(out.request_id, out.finish_reason or "error", out.error, m.finished_time)

    # -- the event loop ------------------------------------------------------------------------
    async def outputs(self) -> AsyncIterator[RequestOutput]:
        """Each delta as it arrives, the final one last."""
        while True:
            out = await self._queue.get()
            yield out
            if out.finished:
                return

    async def final(self, request: Request) -> RequestOutput:
        """Wait for the end of the request; abort it if the client disconnects first."""
        aborted = False
        loop = asyncio.get_running_loop()
        next_check = loop.time() + DISCONNECT_POLL_S
        while True:
            # Check on a clock, not only when no output came: a steady stream of deltas would otherwise never let
            # the check run, and an abandoned request would generate to the end.
            if not aborted and loop.time() >= next_check:
                next_check = loop.time() + DISCONNECT_POLL_S
                if await request.is_disconnected():
                    self.abort()
                    aborted = True
            try:
                out = await asyncio.wait_for(self._queue.get(), DISCONNECT_POLL_S)
            except asyncio.TimeoutError:
                continue
            if out.finished:
                return out

    def abort(self) -> None:
        """Abort the request unless it has finished (safe from any thread, any number of times)."""
        if not self.handle.done:
            self.handle.abort()


class SSEResponse(EventSourceResponse):
    """A text/event-stream response that runs `on_close` however the response ends (done, error, disconnect)."""

    def __init__(self, content: AsyncIterator[ServerSentEvent], on_close: Callable[[], None]):
        # No pings: OpenAI and vLLM send none, and a ping would keep a client's read timeout from noticing a
        # stream whose engine has stalled.
        super().__init__(content, headers={"Cache-Control": "no-cache"}, ping=0, sep=SEP)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()
