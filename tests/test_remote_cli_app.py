"""`nanovllm-tui attach URL` as a user runs it: the real command in a pseudo-terminal, attached to a scripted vLLM
look-alike on 127.0.0.1, draws the app (chat and remote dashboard), answers a prompt, and SIGTERM ends it cleanly
(exit 0, terminal restored). Of several models it asks which one (Ctrl+C there: one line, exit 2). Without a
terminal it refuses in one line, exit 2, before connecting."""

from __future__ import annotations

import fcntl
import itertools
import os
import pty
import re
import select
import signal
import struct
import sys
import termios
import time

from remote_servers import ScriptedServer, free_port
from test_cli import ROOT

from nanovllm_tui.remote.cli import main as attach_main

ALT_SCREEN_OFF = b"\x1b[?1049l"
WINSIZE = struct.pack("HHHH", 40, 160, 0, 0)  # rows, columns
CSI = re.compile(rb"\x1b\[[0-9;?<>=$]*[ -/]*[@-~]")  # colours and cursor moves: they split drawn words


def shown(out: bytearray, start: int = 0) -> bytes:
    """What the app drew after `start`, without escape sequences."""
    return CSI.sub(b"", bytes(out[start:]))


def read_some(fd: int, out: bytearray, wait: float = 0.05) -> bool:
    """Append what the terminal has (waiting up to `wait` seconds) to `out`; False once the child closed it."""
    if select.select([fd], [], [], wait)[0]:
        try:
            out.extend(os.read(fd, 1 << 16))
        except OSError:
            return False
    return True


def read_until(fd: int, out: bytearray, seen: bytes, timeout: float, start: int = 0) -> bool:
    """Read the terminal into `out` until `seen` is drawn after `start`; False at the deadline."""
    deadline = time.monotonic() + timeout
    while seen not in shown(out, start) and time.monotonic() < deadline and read_some(fd, out):
        pass
    return seen in shown(out, start)


def wait_exit(pid: int, fd: int, out: bytearray, limit: float) -> int | None:
    """The child's wait status once it exits within `limit` seconds, else None."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        read_some(fd, out)
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
    return None


def spawn_attach(url: str) -> tuple[int, int]:
    """`nanovllm-tui attach URL --no-history` on a new pseudo-terminal: the child's pid and the terminal's fd."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the real command line
        os.chdir(ROOT)
        fcntl.ioctl(0, termios.TIOCSWINSZ, WINSIZE)  # before the app reads it: wide enough for the dashboard
        # os.environ, not the C environment: readline (loaded under pytest) exports COLUMNS=80 and LINES=24
        # there, and they would win over the terminal's size.
        env = {**os.environ, "TERM": "xterm-256color"}
        argv = [sys.executable, "-m", "nanovllm_tui.app.cli", "attach", url, "--no-history"]
        os.execve(sys.executable, argv, env)
    return pid, fd


def type_keys(fd: int, out: bytearray, keys: bytes) -> None:
    """Type one key at a time, as a person does, reading the terminal in between."""
    for key in keys:
        os.write(fd, bytes([key]))
        read_some(fd, out, 0.02)


def chat_hello(fd: int, out: bytearray, server: ScriptedServer) -> None:
    """Type "hello" into the app's prompt box and send it, then wait for the streamed answer.

    Keys typed before the prompt box has focus go nowhere: first a probe word is typed (a new one each try, after
    ctrl+u, so the box must redraw) until the box shows it; then it is erased and "hello" typed and sent."""
    deadline = time.monotonic() + 30
    for attempt in itertools.count():
        assert time.monotonic() < deadline, f"the prompt box never showed what was typed: {shown(out)[-2000:]!r}"
        probe, mark = f"probe{attempt}".encode(), len(out)
        type_keys(fd, out, b"\x15" + probe)
        if read_until(fd, out, probe, 2.0, start=mark):
            break
    type_keys(fd, out, b"\x7f" * len(probe) + b"hello\r")
    assert read_until(fd, out, b"friend", 20), bytes(out[-2000:])
    assert [r["messages"][-1]["content"] for r in server.requests] == ["hello"], server.requests


def test_attach_runs_the_app_on_a_terminal_and_sigterm_ends_it():
    with ScriptedServer(token_delay=0.01) as server:
        pid, fd = spawn_attach(server.url)
        status = None
        out = bytearray()
        try:
            assert read_until(fd, out, b"no block map", 60), shown(out)[-2000:]
            chat_hello(fd, out, server)
            mark = len(out)
            os.kill(pid, signal.SIGTERM)
            status = wait_exit(pid, fd, out, 10)
            assert status is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
            assert ALT_SCREEN_OFF in out[mark:] and b"Traceback" not in out[mark:]
        finally:
            if status is None:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            os.close(fd)


def test_of_several_models_the_user_picks_one_on_the_terminal():
    with ScriptedServer(models=("a/one", "b/two"), token_delay=0.01) as server:
        pid, fd = spawn_attach(server.url)
        status = None
        out = bytearray()
        try:
            assert read_until(fd, out, b"model to chat with (1-2): ", 60), shown(out)[-2000:]
            assert b"serves 2 models:\r\n  1. a/one\r\n  2. b/two\r\n" in shown(out)
            mark = len(out)
            os.write(fd, b"3\r")  # not one of them: asked again
            assert read_until(fd, out, b"model to chat with (1-2): ", 10, start=mark), shown(out, mark)
            assert b"'3' is not one of them" in shown(out, mark)
            os.write(fd, b"2\r")
            assert read_until(fd, out, b"no block map", 60), shown(out)[-2000:]
            chat_hello(fd, out, server)
            assert [r["model"] for r in server.requests] == ["b/two"]  # the app chats with the model picked
            os.kill(pid, signal.SIGTERM)
            status = wait_exit(pid, fd, out, 10)
            assert status is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
        finally:
            if status is None:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            os.close(fd)


def test_ctrl_c_at_the_model_question_is_one_line_and_exit_2():
    with ScriptedServer(models=("a/one", "b/two")) as server:
        pid, fd = spawn_attach(server.url)
        status = None
        out = bytearray()
        try:
            assert read_until(fd, out, b"model to chat with (1-2): ", 60), shown(out)[-2000:]
            mark = len(out)
            os.write(fd, b"\x03")  # Ctrl+C: the terminal sends SIGINT
            status = wait_exit(pid, fd, out, 10)
            assert status is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 2, shown(out)
            said = shown(out, mark).strip().splitlines()
            assert said[-1].startswith(b"nanovllm-tui attach: error: interrupted: no model picked; pass --model")
            assert b"Traceback" not in out and server.requests == []
        finally:
            if status is None:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            os.close(fd)


def test_attach_without_a_terminal_refuses_before_connecting(capsys):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens: a connection attempt would say so instead
    assert attach_main([url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nanovllm-tui attach: error: the app needs a terminal") and err.count("\n") == 1
