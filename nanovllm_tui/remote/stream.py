"""EventStream: one open server-sent-events response of an OpenAI-compatible server, read as JSON events.

OpenAI-style servers send one JSON object per `data:` line and end with `data: [DONE]`; multi-line SSE data
fields are not used by them and not supported here. close() may be called from any thread: it shuts the TCP
connection down, which both wakes a reader blocked on the socket and tells the server the client has gone
(vLLM aborts a request whose client disconnects).
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import httpx

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
                for line in self._response.iter_lines():
                    event = self._parse(line)
                    if self.done:
                        return
                    if event is not None:
                        yield event
        except RemoteError:
            if not self.closed:
                raise
        finally:
            self._response.close()

    def _parse(self, line: str) -> dict[str, Any] | None:
        """The JSON object of a `data:` line; None for blank, comment and other SSE field lines."""
        if not line or line.startswith(":") or line.startswith(("event:", "id:", "retry:")):
            return None
        if not line.startswith("data:"):
            raise BadResponse(f"bad response from {self.url}: not an event stream (line {_excerpt(line)})")
        data = line[len("data:") :].strip()
        if data == _DONE:
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
            raise RequestRejected(f"the server failed this request: {str(message).splitlines()[0][:200]}")
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
