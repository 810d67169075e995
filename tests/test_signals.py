"""Ctrl+C / SIGTERM while the app generates: the real `nanovllm-tui` in a pseudo-terminal exits within
seconds (generous bounds: CI is a loaded 2-core machine), leaves the alternate screen (terminal restored) and
leaves no process behind, with and without tensor-parallel worker processes. SIGKILL of the app must not orphan its engine process or TP workers either.
SIGTERM while the model loads ends it too. Every wait is on an event (output, CPU time, exit) with a deadline."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import sys
import termios
import time

import psutil
import pytest
from test_cli import ROOT

ALT_SCREEN_ON, ALT_SCREEN_OFF = b"\x1b[?1049h", b"\x1b[?1049l"


class PtyApp:
    """The CLI on a 140x40 pseudo-terminal; read() keeps everything it printed."""

    def __init__(self, model_dir, tp: int):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the real command line, nothing mocked
            os.chdir(ROOT)
            os.environ["TERM"] = "xterm-256color"
            os.execv(
                sys.executable,
                [
                    sys.executable,
                    "-m",
                    "nanovllm_tui.app.cli",
                    "--model",
                    str(model_dir),
                    "--device",
                    "cpu",
                    "--block-size",
                    "16",
                    "--max-model-len",
                    "512",
                    "--num-kvcache-blocks",
                    "64",
                    "--tensor-parallel-size",
                    str(tp),
                ],
            )
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 140, 0, 0))
        self.out = bytearray()
        self.status: int | None = None

    def read(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if select.select([self.fd], [], [], 0.02)[0]:
                try:
                    self.out.extend(os.read(self.fd, 1 << 16))
                except OSError:  # the child closed the terminal
                    return

    def read_until(self, seen: bytes, timeout: float, start: int = 0) -> bool:
        """Read until `seen` appears in the output after offset `start`; False at the deadline."""
        deadline = time.monotonic() + timeout
        while seen not in self.out[start:] and time.monotonic() < deadline:
            self.read(0.05)
        return seen in self.out[start:]

    def type_prompt(self, text: str, timeout: float) -> None:
        """Type `text` until the prompt box shows it (keys typed before the box has focus go nowhere), then Enter."""
        deadline = time.monotonic() + timeout
        last_word = text.rsplit(maxsplit=1)[-1].encode()
        while time.monotonic() < deadline:
            mark = len(self.out)
            os.write(self.fd, text.encode())
            if self.read_until(last_word, 3.0, start=mark):
                os.write(self.fd, b"\r")
                return
            os.write(self.fd, b"\x7f" * len(text))  # whatever arrived of it: erased before the next try
        raise AssertionError(f"the prompt box never showed {text!r}: {bytes(self.out[-2000:])!r}")

    def wait_exit(self, limit: float) -> float:
        start = time.monotonic()
        while time.monotonic() - start < limit:
            self.read(0.02)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = status
                return time.monotonic() - start
        return float("inf")

    def kill(self) -> None:
        if self.status is None:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self.fd)


@pytest.mark.slow
@pytest.mark.parametrize(
    "sig,tp",
    [(signal.SIGTERM, 1), (signal.SIGINT, 1), (signal.SIGTERM, 2), (signal.SIGKILL, 2)],
    ids=["sigterm", "ctrl_c", "sigterm_tp2", "sigkill_tp2"],
)
def test_signal_during_generation_exits_cleanly(tiny_qwen3_gqa_dir, sig, tp):
    app = PtyApp(tiny_qwen3_gqa_dir, tp)
    try:
        assert app.read_until(ALT_SCREEN_ON, 120), bytes(app.out[-2000:])
        proc = psutil.Process(app.pid)
        family = proc.children(recursive=True)  # the engine process (the default) and its TP workers
        assert len(family) >= tp

        def user_cpu() -> float:  # the app and its engine process: generation burns CPU in one of them
            return sum(p.cpu_times().user for p in [proc, *family] if p.is_running())

        idle = user_cpu()
        app.type_prompt("Tell me a very long story about a dragon", 60)
        deadline = time.monotonic() + 60
        while user_cpu() - idle < 0.3 and time.monotonic() < deadline:  # generating: CPU time grows
            app.read(0.1)
        assert user_cpu() - idle >= 0.3, "no generation seems to be running"
        mark = len(app.out)
        os.kill(app.pid, sig)
        took = app.wait_exit(30.0)
        assert took < 15.0, f"still running {took:.1f} s after {sig.name}"  # generous: CI is a loaded 2-core box
        assert app.status is not None
        if sig is not signal.SIGKILL:
            assert os.WIFEXITED(app.status) and os.WEXITSTATUS(app.status) == 0, app.status
            tail = bytes(app.out[mark:])
            assert ALT_SCREEN_OFF in tail, "the terminal was left on the alternate screen"
            assert b"Traceback" not in tail
        assert not wait_gone(family, 15.0), "orphans"
    finally:
        app.kill()


def alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(procs: list[psutil.Process], timeout: float) -> list[int]:
    """The pids still alive after up to `timeout` seconds of polling."""
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p.pid for p in procs if alive(p)]


def test_sigterm_while_loading_ends_the_app_and_its_engine(tiny_qwen3_gqa_dir):
    """SIGTERM once the engine process exists but before the UI: exit within 5 s, one line, no orphans."""
    app = PtyApp(tiny_qwen3_gqa_dir, 1)
    try:
        assert app.read_until(b"loading", 120), bytes(app.out[-2000:])
        proc = psutil.Process(app.pid)
        deadline = time.monotonic() + 60
        while not proc.children(recursive=True) and time.monotonic() < deadline:
            time.sleep(0.01)
        family = proc.children(recursive=True)
        assert family, "no engine process was started"
        os.kill(app.pid, signal.SIGTERM)
        took = app.wait_exit(30.0)
        assert took < 15.0, f"still running {took:.1f} s after SIGTERM"
        assert app.status is not None and os.WIFEXITED(app.status), app.status
        assert os.WEXITSTATUS(app.status) in (0, 130), app.status
        assert b"Traceback" not in app.out
        assert not wait_gone(family, 15.0), "orphans"
    finally:
        app.kill()
