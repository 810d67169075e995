"""EventStream (attach mode's reader of streamed answers, over httpx-sse) against a real HTTP server on 127.0.0.1
sending exact bytes: SSE framing it must accept (comments, other fields, CRLF, multi-line data), an error event
(RequestRejected), bad data (BadResponse, one line), and close() from another thread waking a blocked reader."""

from __future__ import annotations

import json
import threading
import time

import pytest
from remote_servers import ScriptedServer

from nanovllm_tui.remote.client import RemoteClient
from nanovllm_tui.remote.errors import BadResponse, RequestRejected

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def events(raw: bytes) -> list[dict]:
    """What EventStream yields for a server answering every stream with `raw`."""
    with ScriptedServer(raw=raw) as server:
        client = RemoteClient(server.url)
        try:
            return list(client.stream("/v1/chat/completions", BODY))
        finally:
            client.close()


def test_framing_the_client_accepts():
    raw = (
        b": ping - a comment line, as sse-starlette's keep-alive sends\n\n"
        b'event: message\nid: 1\ndata: {"a": 1}\n\n'
        b'data: {"b":\r\ndata: 2}\r\n\r\n'  # CRLF line ends, data over two lines (joined by a newline)
        b"retry: 100\n\n"  # an event with no data: nothing to yield
        b'data:{"c": 3}\n\n'  # no space after the colon
        b"data: [DONE]\n\n"
        b'data: {"after": "done"}\n\n'  # never read: [DONE] ends the stream
    )
    assert events(raw) == [{"a": 1}, {"b": 2}, {"c": 3}]


def test_a_stream_without_done_ends_at_eof():
    assert events(b'data: {"a": 1}\n\ndata: {"a": 2}\n\n') == [{"a": 1}, {"a": 2}]


@pytest.mark.parametrize(
    "event",
    [
        {"error": {"message": "the engine failed this request: boom\nsecond line", "type": "internal_error"}},
        {"object": "error", "message": "the engine failed this request: boom", "code": 500},  # vLLM's old shape
    ],
)
def test_an_error_event_rejects_the_request(event):
    raw = b'data: {"choices": []}\n\n' + f"data: {json.dumps(event)}\n\n".encode() + b"data: [DONE]\n\n"
    with pytest.raises(RequestRejected) as e:
        events(raw)
    assert str(e.value).startswith("the server failed this request: the engine failed this request: boom")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "raw,message",
    [
        (b"data: <html>\n\n", r"not JSON \('<html>'\)$"),
        (b"data: [1, 2]\n\n", r"JSON but not an object \('\[1, 2\]'\)$"),
    ],
)
def test_bad_data_is_one_line(raw, message):
    with pytest.raises(BadResponse, match=message) as e:
        events(raw)
    assert str(e.value).startswith("bad event from http://127.0.0.1:") and "\n" not in str(e.value)


def test_close_from_another_thread_wakes_the_reader():
    with ScriptedServer(token_delay=60.0) as server:  # one chunk, then a minute of silence
        client = RemoteClient(server.url)
        try:
            stream = client.stream("/v1/chat/completions", {**BODY, "max_tokens": 3})
            got: list[dict] = []
            errors: list[BaseException] = []
            first = threading.Event()

            def read() -> None:
                try:
                    for event in stream:
                        got.append(event)
                        first.set()
                except BaseException as e:  # the test fails on it below
                    errors.append(e)

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            assert first.wait(10)
            start = time.monotonic()
            stream.close()
            reader.join(10)
            assert not reader.is_alive() and time.monotonic() - start < 5
            assert errors == [] and len(got) == 2  # the role chunk and the first word; close() is quiet
        finally:
            client.close()
