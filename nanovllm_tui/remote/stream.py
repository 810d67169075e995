"""EventStream: one open server-sent-events response of an OpenAI-compatible server, read as JSON events.

OpenAI-style servers send one JSON object per event's data and end with `data: [DONE]`; httpx-sse does the SSE
framing (fields, comments, multi-line data), this reads the JSON out of it. An error object in an event is the
server failing the request (RequestRejected); an event that is not a JSON object is BadResponse. close() may be
called from any thread: it shuts the TCP connection down, which both wakes a reader blocked on the socket and
tells the server the client has gone (vLLM aborts a request whose client disconnects).
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import httpx
from httpx_sse import EventSource, SSEError

from nanovllm_tui.remote.errors import BadResponse, RemoteError, RequestRejected

_DONE = "[DONE]"


class EventStream:
    """Iterate for the stream's JSON events (dicts); stops at [DONE], at EOF, or quietly once close() was called."""

    def __init__(self, response: httpx.Response, url: str, errors: Callable[[], AbstractContextManager[None]]):
        self.url = url
        self._response = response
        self._errors = errors  # maps httpx exceptions to RemoteError subclasses
        self.closed = False  # close() was called: read errors from then on are ours, not the server's
        self.done = False  # the server sent [DONE]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        try:
            with self._errors():
                yield from self._events()
        except RemoteError:
            if not self.closed:
                raise
        finally:
            self._response.close()

    def _events(self) -> Iterator[dict[str, Any]]:
        """The JSON events up to [DONE], framed by httpx-sse."""
        try:
            for sse in EventSource(self._response).iter_sse():
                event = self._parse(sse.data)
                if self.done:
                    return
                if event is not None:
                    yield event
        except SSEError as e:  # the content type is not text/event-stream (an httpx error: caught before _errors)
            raise BadResponse(f"bad response from {self.url}: not an event stream ({e})") from None

    def _parse(self, data: str) -> dict[str, Any] | None:
        """The JSON object of one event's data; None for an event without data and for [DONE]."""
        if not data:  # an event of only `event:` / `id:` / `retry:` fields
            return None
        if data.strip() == _DONE:
            self.done = True
            return None
        try:
            event = json.loads(data)
        except json.JSONDecodeError:
            raise BadResponse(f"bad event from {self.url}: not JSON ({_excerpt(data)})") from None
        if not isinstance(event, dict):
            raise BadResponse(f"bad event from {self.url}: JSON but not an object ({_excerpt(data)})")
        error = event.get("error")
        if error is not None or event.get("object") == "error":
            detail = error if error is not None else event
            message = detail.get("message") if isinstance(detail, dict) else detail
            raise RequestRejected(f"the server failed this request: {' '.join(str(message).split())[:200]}")
        return event

    def close(self) -> None:
        """Stop the stream now: shut the connection down so a blocked reader wakes and the server sees us leave."""
        self.closed = True
        network = self._response.extensions.get("network_stream")
        sock = network.get_extra_info("socket") if network is not None else None
        if isinstance(sock, socket.socket):
            # socket.socket's shutdown, not SSLSocket's: that one also drops the TLS object under the reader;
            # OSError: already closed by the reader or the server
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _excerpt(text: str, n: int = 60) -> str:
    return repr(text[:n] + ("…" if len(text) > n else ""))
