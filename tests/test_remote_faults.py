"""Attach mode when the server misbehaves: garbage, a wrong or missing API key, a server that is down and then
comes up (backoff, then recovery), and a hung server (a timeout, never a hang). Real servers on 127.0.0.1."""

from __future__ import annotations

import threading
import time

import pytest
from remote_servers import HungServer, ScriptedServer, free_port

from nanovllm_tui.engine.sampling_params import SamplingParams
from nanovllm_tui.remote.client import RemoteClient
from nanovllm_tui.remote.errors import BadResponse, ServerTimeout, ServerUnreachable, Unauthorized
from nanovllm_tui.remote.poller import BAD_RESPONSE, OK, UNAUTHORIZED, UNREACHABLE, MetricsPoller, PollStatus
from nanovllm_tui.remote.service import RemoteService

CHAT = [{"role": "user", "content": "hi"}]


def test_garbage_server_gives_one_clear_message():
    with ScriptedServer(garbage=True) as server:
        client = RemoteClient(server.url)
        with pytest.raises(BadResponse, match=r"/v1/models: not JSON \(starts '<html>") as e:
            client.models()
        assert "\n" not in str(e.value)
        poller = MetricsPoller(client, interval=0.05)
        with pytest.raises(BadResponse):
            poller.poll_once()
        status = poller.status
        assert status.state == BAD_RESPONSE and status.retry_in == 0.05
        assert status.message is not None and "\n" not in status.message
        assert status.message.startswith(f"bad response from {server.url}/metrics: not Prometheus text: ")
        assert status.message.endswith("— retrying in 0.1 s") or status.message.endswith("— retrying in 0.05 s")
        # A stream request answered with HTML instead of an event stream.
        with pytest.raises(BadResponse, match="text/html, not an event stream"):
            client.stream("/v1/chat/completions", {"model": "m", "messages": CHAT})


def test_401_without_or_with_a_wrong_key():
    with ScriptedServer(api_key="sesame") as server:
        with pytest.raises(
            Unauthorized, match=r"^401 Unauthorized from .*/v1/models: pass the server's key with --api-key$"
        ):
            RemoteService.connect(server.url)
        with pytest.raises(Unauthorized, match=r"check the key passed with --api-key$"):
            RemoteService.connect(server.url, api_key="wrong")
        service = RemoteService.connect(server.url, api_key="sesame", interval=0.05)
        try:
            assert service.submit(CHAT, SamplingParams(max_tokens=3)).result(timeout=10).text == "Hello there,"
        finally:
            service.shutdown()
        # A poller without the key stops at the first 401: retrying won't fix a key.
        served = server.metrics_served
        poller = MetricsPoller(RemoteClient(server.url), interval=0.05)
        done = threading.Event()
        poller.subscribe(lambda status, snap: done.set() if status.state == UNAUTHORIZED else None)
        poller.start()
        assert done.wait(10)
        assert poller._thread is not None
        poller._thread.join(5)
        assert not poller._thread.is_alive() and server.metrics_served == served
        assert poller.status.retry_in is None and "--api-key" in (poller.status.message or "")


def test_down_then_up_backs_off_then_recovers():
    port = free_port()
    poller = MetricsPoller(RemoteClient(f"http://127.0.0.1:{port}", timeout=2.0), interval=0.05, max_backoff=0.4)
    statuses: list[PollStatus] = []
    down, up = threading.Event(), threading.Event()

    def listener(status: PollStatus, snap: object) -> None:
        statuses.append(status)
        if status.failures >= 5:
            down.set()
        if status.state == OK:
            up.set()

    poller.subscribe(listener)
    poller.start()
    try:
        assert down.wait(20)
        failed = [s for s in statuses if s.state == UNREACHABLE]
        assert [s.retry_in for s in failed[:5]] == [0.05, 0.1, 0.2, 0.4, 0.4]  # doubling, capped
        assert failed[1].message is not None
        assert failed[1].message.startswith(f"server unreachable: http://127.0.0.1:{port}/metrics: ")
        assert failed[1].message.endswith("— retrying in 0.1 s")
        assert poller.latest is None
        with ScriptedServer(port=port):
            assert up.wait(20)
            assert poller.status == PollStatus(OK) and poller.latest is not None
            assert poller.latest.kv_cache_usage == 0.25
    finally:
        poller.stop()


def test_hung_server_times_out():
    with HungServer() as hung:
        client = RemoteClient(hung.url, timeout=0.3, stream_timeout=0.3)
        for call in (client.models, client.metrics_text):
            start = time.monotonic()
            with pytest.raises(ServerTimeout, match=r"did not answer within 0.3 s$"):
                call()
            assert time.monotonic() - start < 3
        poller = MetricsPoller(client, interval=0.05)
        with pytest.raises(ServerTimeout):
            poller.poll_once()
        assert poller.status.state == UNREACHABLE
        assert (
            poller.status.message is not None and "did not answer within 0.3 s — retrying in" in poller.status.message
        )
        with pytest.raises(ServerTimeout):
            client.stream("/v1/chat/completions", {"model": "m", "messages": CHAT})


def test_stream_that_stalls_ends_the_request_with_an_error():
    """The server sends one chunk, then nothing: the handle ends with an error after stream_timeout."""
    with ScriptedServer(token_delay=30.0) as server:
        service = RemoteService.connect(server.url, interval=0.05, stream_timeout=0.5)
        try:
            handle = service.submit(CHAT, SamplingParams(max_tokens=5))
            start = time.monotonic()
            out = handle.result(timeout=10)
            assert time.monotonic() - start < 5
            assert out.finish_reason == "error" and out.text == "Hello"
            assert out.error is not None and out.error.endswith("did not answer within 0.5 s")
        finally:
            service.shutdown(timeout=1)


def test_unreachable_at_submit_ends_that_request_only():
    with ScriptedServer() as server:
        service = RemoteService.connect(server.url, interval=0.05)
    # The server is gone now: the request fails with a reason, the service keeps running.
    try:
        out = service.submit(CHAT, SamplingParams(max_tokens=3)).result(timeout=10)
        assert out.finish_reason == "error" and out.error is not None and "/v1/chat/completions" in out.error
        assert service.is_running and service.fatal_error is None
    finally:
        service.shutdown(timeout=1)


def test_connect_to_nothing_is_unreachable():
    with pytest.raises(ServerUnreachable, match=r"/v1/models: .*refused"):
        RemoteService.connect(f"http://127.0.0.1:{free_port()}")


def test_key_revoked_while_attached_is_fatal_and_a_broken_listener_is_not():
    with ScriptedServer(api_key="old") as server:
        service = RemoteService.connect(server.url, api_key="old", interval=0.05)
        try:
            polls = threading.Event()

            def broken(status: PollStatus, snap: object) -> None:
                polls.set()
                raise RuntimeError("a listener bug")

            service.subscribe(broken)
            assert polls.wait(10)
            polls.clear()
            assert polls.wait(10)  # polling went on after the listener raised
            server.api_key = "new"  # the server restarts with another key
            deadline = time.monotonic() + 10
            while service.fatal_error is None and time.monotonic() < deadline:
                polls.clear()
                polls.wait(1)
            assert service.fatal_error is not None and service.fatal_error.endswith(
                "check the key passed with --api-key"
            )
        finally:
            service.shutdown(timeout=2)
