"""The engine process behind ProcessEngineService: its entry point (child_main) and the safety it sets up before
anything slow happens, i.e. before the engine is built:

- it dies with its parent at any stage, loading included: prctl(PR_SET_PDEATHSIG, SIGKILL) on Linux (then a
  check that the parent did not die first), a watchdog thread polling os.getppid() elsewhere;
- it sends a heartbeat ("alive") every ChildOptions.heartbeat_interval from a thread of its own (named
  HEARTBEAT_THREAD for the OS: top -H, /proc/PID/task/*/comm), so the parent can tell a stopped (SIGSTOP) or
  wedged process from a busy one.

Then process_engine.serve builds the LLM and serves it. The messages are described in process_protocol.
This module imports no torch, so both are in place within milliseconds of the start, before torch loads.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from nanovllm_tui.engine.serving.process_protocol import ChildOptions

PR_SET_PDEATHSIG = 1  # linux/prctl.h
PR_SET_NAME = 15
HEARTBEAT_THREAD = b"nanovllm-beat"  # at most 15 bytes


class ChildOut:
    """The child's sending end of the pipe: the heartbeat, the pump and the main thread all send, one at a time."""

    def __init__(self, conn: Connection):
        self._conn = conn
        self._lock = threading.Lock()
        self._closed = False

    def send(self, message: tuple) -> bool:
        """Send one message; False once closed or when the parent is gone."""
        with self._lock:
            if self._closed:
                return False
            try:
                self._conn.send(message)
            except (OSError, ValueError):
                return False
            return True

    def close(self) -> None:
        """Nothing is sent after this (the "bye" that precedes it stays the last message)."""
        with self._lock:
            self._closed = True


def _prctl(option: int, arg: int | bytes) -> bool:
    """prctl(2) on Linux; False where it is missing or fails."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return int(ctypes.CDLL(None, use_errno=True).prctl(option, arg, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def die_with_parent(parent_pid: int) -> None:
    """Make this process end when `parent_pid` dies, whatever it is doing then."""
    if _prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL)):
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)
        return
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="nanovllm-parent-watch", daemon=True).start()


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os._exit(1)


def _heartbeat(out: ChildOut, interval: float) -> None:
    _prctl(PR_SET_NAME, HEARTBEAT_THREAD)
    while out.send(("alive",)):
        time.sleep(interval)


def child_main(
    conn: Connection, model: str, engine_kwargs: dict[str, Any], options: ChildOptions, parent_pid: int
) -> None:
    """Entry point of the engine process (spawned): tie its life to the parent's, beat, build, serve."""
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the parent's to handle; it then shuts us down
    out = ChildOut(conn)
    threading.Thread(target=_heartbeat, args=(out, options.heartbeat_interval), name="nanovllm-heartbeat", daemon=True).start()  # fmt: skip
    from nanovllm_tui.engine.serving.process_engine import serve  # the heavy part: torch, the model

    try:
        serve(conn, out, model, engine_kwargs, options)
    finally:
        out.close()
        conn.close()
