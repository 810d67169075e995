"""`nanovllm-tui serve` before its engine is ready and after its engine process dies, as real subprocesses on
127.0.0.1 with the demo model. The server listens at once: while the engine starts, /health, /v1/models and
both completion routes answer 503 with OpenAI's error body. If the engine process dies, the watch view keeps
serving 503s (saying the engine stopped) until it is stopped; --headless exits with status 1 and one line.

To make start-up long without a sleep in the product, the engine process is held at interpreter start by a
sitecustomize.py put on PYTHONPATH for the test only: it waits (with a deadline) until the test creates a file."""

from __future__ import annotations

import os
import pty
import re
import signal
import sys
import time

import httpx
import openai
import psutil
import pytest
from test_remote_cli_app import read_until, shown, wait_exit
from test_serve import ENGINE_FLAGS, MODEL, REPO, ServerProcess

pytestmark = pytest.mark.slow  # each test starts its own server and engine

HOLD = '''"""Test-only (tests/test_serve_lifecycle.py): hold a multiprocessing child at start until a file exists."""
import os, sys, time
gate = os.environ.get("NANOVLLM_TEST_ENGINE_GATE")
if gate and "--multiprocessing-fork" in sys.argv:  # a spawned child: the engine process
    deadline = time.monotonic() + 120
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
'''
CHAT = [{"role": "user", "content": "Hi"}]
LISTENING = r"listening on (http://127\.0\.0\.1:\d+)"


def engine_process(server_pid: int, timeout: float = 60.0) -> psutil.Process:
    """The server's engine process (multiprocessing's spawned child, not its resource tracker)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in psutil.Process(server_pid).children():
            try:
                if "--multiprocessing-fork" in child.cmdline():
                    return child
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.05)
    raise AssertionError(f"no engine process under pid {server_pid} after {timeout} s")


def assert_503(response: httpx.Response, says: str) -> None:
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "service_unavailable"
    assert says in error["message"] and "\n" not in error["message"], error


def assert_every_route_503(url: str, says: str) -> None:
    """/health, /v1/models and both completion routes: 503 with OpenAI's body; the openai client sees it too."""
    assert_503(httpx.get(url + "/health", timeout=30), says)
    assert_503(httpx.get(url + "/v1/models", timeout=30), says)
    assert_503(httpx.post(url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 2}, timeout=30), says)
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", timeout=30, max_retries=0)
    for stream in (False, True):
        with pytest.raises(openai.InternalServerError) as e:
            client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=2, stream=stream)
        assert e.value.status_code == 503 and e.value.type == "service_unavailable" and says in e.value.message
    assert httpx.get(url + "/metrics", timeout=30).status_code == 200  # scrapes go on either way


def test_every_route_answers_503_while_the_engine_starts(tmp_path, demo_model_dir):
    (tmp_path / "sitecustomize.py").write_text(HOLD)
    gate = tmp_path / "let-the-engine-start"
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "NANOVLLM_TEST_ENGINE_GATE": str(gate)}
    srv = ServerProcess("--model", str(demo_model_dir), "--served-model-name", MODEL, *ENGINE_FLAGS, env=env)
    try:
        url = srv.wait_for(LISTENING, 120).group(1)
        engine_process(srv.proc.pid)  # it exists, held before it imports anything
        assert_every_route_503(url, "the engine is still starting; retry when GET /health answers 200")
        assert not any("engine ready" in line for line in srv.lines), "the engine was not held"
        gate.touch()
        srv.wait_for(r"engine ready", 300)
        assert httpx.get(url + "/health", timeout=30).status_code == 200
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", timeout=120, max_retries=0)
        assert client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=2).usage.completion_tokens >= 1
    finally:
        gate.touch()
        assert srv.stop() == 0, "\n".join(srv.lines)


def test_headless_exits_with_one_line_when_its_engine_dies(demo_model_dir):
    srv = ServerProcess("--model", str(demo_model_dir), "--served-model-name", MODEL, *ENGINE_FLAGS)
    try:
        url = srv.wait_for(LISTENING, 120).group(1)
        srv.wait_for(r"engine ready", 300)
        engine_process(srv.proc.pid).kill()
        statuses = []
        deadline = time.monotonic() + 30
        while srv.proc.poll() is None and time.monotonic() < deadline:  # until the server goes
            try:
                r = httpx.get(url + "/health", timeout=5)
            except httpx.TransportError:  # it stopped listening: on its way out
                break
            statuses.append(r.status_code)
            if r.status_code != 200:
                assert_503(r, "the engine has stopped")
        assert srv.proc.wait(30) == 1
    finally:
        srv.stop()
    assert set(statuses) <= {200, 503}  # 200 only until the server noticed
    said = srv.lines[srv.lines.index(next(ln for ln in srv.lines if "engine ready" in ln)) + 1 :]
    assert len(said) == 1 and said[0].startswith("nanovllm-tui serve: error: the engine stopped ("), srv.lines
    assert said[0].endswith("; exiting")


def test_the_watch_view_answers_503_once_its_engine_dies(demo_model_dir):
    pid, fd = pty.fork()
    if pid == 0:  # the child: the real command line on a terminal, so the watch view runs
        os.chdir(REPO)
        env = {**os.environ, "TERM": "xterm-256color"}
        argv = [sys.executable, "-m", "nanovllm_tui.app.cli", "serve", "--port", "0", "--model", str(demo_model_dir)]
        os.execve(sys.executable, [*argv, "--served-model-name", MODEL, *ENGINE_FLAGS], env)
    out, status = bytearray(), None
    try:
        assert read_until(fd, out, b"engine ready", 300), shown(out)[-2000:]
        m = re.search(LISTENING.encode(), shown(out))
        assert m is not None, shown(out)[-2000:]
        url = m.group(1).decode()
        assert httpx.get(url + "/health", timeout=30).status_code == 200
        engine_process(pid).kill()
        deadline = time.monotonic() + 30
        while httpx.get(url + "/health", timeout=5).status_code == 200 and time.monotonic() < deadline:
            read_until(fd, out, b"never drawn", 0.1)  # keep the terminal drained while the server notices
        assert_every_route_503(url, "the engine has stopped")
        mark = len(out)
        os.kill(pid, signal.SIGTERM)
        status = wait_exit(pid, fd, out, 30)
        assert status is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, shown(out, mark)
        assert b"Traceback" not in out
    finally:
        if status is None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
