"""Ctrl+C / SIGTERM while the app generates: the real `nanovllm-tui` in a pseudo-terminal exits within
5 s, leaves the alternate screen (terminal restored) and leaves no process behind, with and without
tensor-parallel worker processes. SIGKILL of the app must not orphan its engine process or TP workers either."""

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


@pytest.mark.parametrize(
    "sig,tp",
    [(signal.SIGTERM, 1), (signal.SIGINT, 1), (signal.SIGTERM, 2), (signal.SIGKILL, 2)],
    ids=["sigterm", "ctrl_c", "sigterm_tp2", "sigkill_tp2"],
)
def test_signal_during_generation_exits_cleanly(tiny_qwen3_gqa_dir, sig, tp):
    app = PtyApp(tiny_qwen3_gqa_dir, tp)
    try:
        deadline = time.monotonic() + 120
        while ALT_SCREEN_ON not in app.out and time.monotonic() < deadline:
            app.read(0.2)
        assert ALT_SCREEN_ON in app.out, bytes(app.out[-2000:])
        app.read(2.0)  # let the app settle and focus the prompt box
        os.write(app.fd, b"Tell me a very long story about a dragon\r")
        proc = psutil.Process(app.pid)
        family = proc.children(recursive=True)  # the engine process (the default) and its TP workers

        def user_cpu() -> float:  # the app and its engine process: generation burns CPU in one of them
            return sum(p.cpu_times().user for p in [proc, *family] if p.is_running())

        before = user_cpu()
        app.read(2.0)
        assert user_cpu() - before > 0.2, "no generation seems to be running"
        assert len(family) >= tp
        mark = len(app.out)
        os.kill(app.pid, sig)
        took = app.wait_exit(10.0)
        assert took < 5.0, f"still running {took:.1f} s after {sig.name}"
        if sig is not signal.SIGKILL:
            assert os.WIFEXITED(app.status) and os.WEXITSTATUS(app.status) == 0, app.status
            tail = bytes(app.out[mark:])
            assert ALT_SCREEN_OFF in tail, "the terminal was left on the alternate screen"
            assert b"Traceback" not in tail
        gone = time.monotonic() + 5.0
        while any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in family) and time.monotonic() < gone:
            time.sleep(0.05)
        assert not [p.pid for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], "orphans"
    finally:
        app.kill()
