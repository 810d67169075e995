"""RemoteService and `nanovllm-tui attach` against a scripted vLLM look-alike on 127.0.0.1: streamed chat and
completions, abort closing the stream (the server sees the client leave), concurrency, batch(), TLS, the CLI's
start-up checks."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import threading

import pytest
from remote_servers import ScriptedServer, free_port

from nanovllm_tui.engine.sampling_params import SamplingParams
from nanovllm_tui.remote.cli import main as attach_main
from nanovllm_tui.remote.errors import ServerUnreachable
from nanovllm_tui.remote.openai_api import read_chunk
from nanovllm_tui.remote.protocol import ChatBackend
from nanovllm_tui.remote.service import RemoteService

CHAT = [{"role": "user", "content": "hi"}]


@pytest.fixture
def served():
    with ScriptedServer() as server:
        service = RemoteService.connect(server.url, interval=0.05)
        try:
            yield server, service
        finally:
            service.shutdown(timeout=2)


def test_chat_streams_into_a_handle(served):
    server, service = served
    assert isinstance(service, ChatBackend)
    handle = service.submit(CHAT, SamplingParams(max_tokens=5, temperature=0.0, top_k=5), enable_thinking=False)
    deltas = [out.text for out in handle if not out.finished]
    assert deltas == ["Hello", " there", ",", " friend", "."]
    assert handle.text == "Hello there, friend." and handle.finish_reason == "length" and handle.error is None
    m = handle.metrics
    assert (m.num_prompt_tokens, m.num_cached_tokens, m.num_generation_tokens) == (7, 4, 5)
    assert m.first_token_time is not None and m.finished_time is not None and m.finished_time >= m.first_token_time
    body = server.requests[-1]
    assert body["messages"] == CHAT and body["model"] == "Qwen/Qwen3-0.6B" and body["stream"] is True
    assert (body["max_tokens"], body["temperature"], body["top_k"]) == (5, 0.0, 5)
    assert body["stream_options"] == {"include_usage": True}
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert "ignore_eos" not in body and "seed" not in body  # vLLM extensions only when used


def test_completions_from_text_and_token_ids(served):
    server, service = served
    assert service.submit("Once upon", SamplingParams(max_tokens=2)).result(timeout=10).text == "Hello there"
    assert server.requests[-1]["prompt"] == "Once upon"
    out = service.submit([1, 2, 3], SamplingParams(max_tokens=1, seed=7, ignore_eos=True)).result(timeout=10)
    assert out.text == "Hello" and out.finish_reason == "length"
    assert server.requests[-1]["prompt"] == [1, 2, 3] and server.requests[-1]["seed"] == 7
    assert server.requests[-1]["ignore_eos"] is True
    assert service.tokenize("ab") == [97, 98]


def test_bad_input_and_rejected_requests(served):
    _, service = served
    for bad in ("", [], [{"content": "no role"}], 42):
        with pytest.raises(ValueError):
            service.submit(bad)  # type: ignore[arg-type]
    out = service.submit(CHAT, SamplingParams(max_tokens=200_000)).result(timeout=10)
    assert out.finish_reason == "error" and out.error is not None and out.error.endswith(": max_tokens is too large")
    assert service.submit(CHAT, SamplingParams(max_tokens=1)).result(timeout=10).text == "Hello"  # still fine


def test_abort_closes_the_stream():
    with ScriptedServer(token_delay=0.02) as server:
        service = RemoteService.connect(server.url, interval=0.05)
        try:
            handle = service.submit(CHAT, SamplingParams(max_tokens=100_000), request_id="r1")
            assert handle.get(timeout=10) is not None  # streaming has begun
            with pytest.raises(ValueError, match="already live"):
                service.submit(CHAT, request_id="r1")
            assert service.abort("r1")
            out = handle.result(timeout=1)
            assert out.finish_reason == "abort" and out.error is None
            assert server.disconnected.wait(10)  # the server saw the client leave
            assert server.chunks_sent < 1000 and not service.abort("r1")
            # The service keeps working after an abort.
            assert service.submit(CHAT, SamplingParams(max_tokens=2)).result(timeout=10).text == "Hello there"
        finally:
            service.shutdown(timeout=2)


def test_two_concurrent_streams_and_batch():
    with ScriptedServer(token_delay=0.01) as server:
        service = RemoteService.connect(server.url, interval=0.05)
        try:
            with service.batch():
                a = service.submit(CHAT, SamplingParams(max_tokens=20))
                b = service.submit("x", SamplingParams(max_tokens=10))
                assert server.requests == []  # held until the block ends
            out_a, out_b = a.result(timeout=20), b.result(timeout=20)
            assert out_a.text == "Hello there, friend." * 4 and out_b.text == "Hello there, friend." * 2
            assert len(server.requests) == 2
        finally:
            service.shutdown(timeout=2)
        with pytest.raises(RuntimeError, match="shut down"):
            service.submit(CHAT)
        assert not service.is_running


def test_shutdown_aborts_live_requests_quickly():
    with ScriptedServer(token_delay=0.05) as server:
        service = RemoteService.connect(server.url, interval=0.05)
        handle = service.submit(CHAT, SamplingParams(max_tokens=100_000))
        assert handle.get(timeout=10) is not None
        service.shutdown(timeout=2)
        assert handle.result(timeout=1).finish_reason == "abort"
        assert server.disconnected.wait(10)


def test_reasoning_chunks():
    assert read_chunk({"choices": [{"delta": {"reasoning_content": "hm"}}]}).reasoning == "hm"
    assert read_chunk({"choices": [{"delta": {"reasoning": "hm", "content": None}}]}).reasoning == "hm"
    assert read_chunk({"choices": [{"text": "x", "finish_reason": "tool_calls"}]}).finish_reason == "stop"
    assert read_chunk({"choices": [], "usage": {"prompt_tokens": 3}}).prompt_tokens == 3


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_tls(tmp_path, monkeypatch):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    with ScriptedServer(tls=ctx, token_delay=0.02) as server:
        assert server.url.startswith("https://")
        with pytest.raises(ServerUnreachable, match="CERTIFICATE_VERIFY_FAILED"):
            RemoteService.connect(server.url)  # a self-signed certificate is not trusted by default
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        service = RemoteService.connect(server.url, interval=0.05)
        try:
            assert service.submit(CHAT, SamplingParams(max_tokens=3)).result(timeout=10).text == "Hello there,"
            assert service.poller.poll_once().kv_cache_usage == 0.25
            handle = service.submit(CHAT, SamplingParams(max_tokens=100_000))
            assert handle.get(timeout=10) is not None
            assert service.abort(handle.request_id) and handle.result(timeout=1).finish_reason == "abort"
            assert server.disconnected.wait(10)
        finally:
            service.shutdown(timeout=2)


# -- the CLI -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("url", ["ftp://127.0.0.1:8000", "127.0.0.1:8000", "http://", "http://[::1"])
def test_cli_bad_url(url, capsys):
    assert attach_main([url, "--check"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nanovllm-tui attach: error: bad server URL") and err.count("\n") == 1


def test_cli_unreachable(capsys):
    url = f"http://127.0.0.1:{free_port()}"
    assert attach_main([url, "--check", "--timeout", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"nanovllm-tui attach: error: cannot attach: {url}/v1/models: ") and err.count("\n") == 1


def test_cli_model_choice_and_check(capsys):
    with ScriptedServer(models=("a/one", "b/two")) as server:
        assert attach_main([server.url, "--check"]) == 2
        err = capsys.readouterr().err
        assert "serves 2 models; pick one with --model NAME (a/one, b/two)" in err and err.count("\n") == 1
        assert attach_main([server.url, "--model", "c/three", "--check"]) == 2
        assert "does not serve model 'c/three'; it serves: a/one, b/two" in capsys.readouterr().err
        assert attach_main([server.url, "--model", "b/two", "--check", "--interval", "0.05"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0] == f"attached to {server.url}: model b/two (max_model_len 4096)"
        assert lines[1].startswith("kv 25.0% · running 3 · waiting 1 · prefix hits - · preemptions 0")


def test_cli_rejects_bad_interval(capsys):
    with pytest.raises(SystemExit) as e:
        attach_main(["http://127.0.0.1:1", "--interval", "0"])
    assert e.value.code == 2 and "must be > 0 seconds" in capsys.readouterr().err


def test_cli_check_in_a_thread_does_not_need_a_terminal():
    """--check runs headless (no TTY) and returns: what scripts and CI rely on."""
    with ScriptedServer() as server:
        result: list[int] = []
        t = threading.Thread(target=lambda: result.append(attach_main([server.url, "--check", "--interval", "0.05"])))
        t.start()
        t.join(20)
        assert result == [0]


def test_nanovllm_tui_attach_dispatch():
    """`nanovllm-tui attach ...` reaches the attach CLI: a bad URL is one line on stderr and exit status 2."""
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "nanovllm_tui.app.cli", "attach", "ftp://127.0.0.1:8000"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("nanovllm-tui attach: error: bad server URL") and proc.stderr.count("\n") == 1
