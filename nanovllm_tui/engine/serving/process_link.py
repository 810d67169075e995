"""EngineProcess: the parent's end of the engine process behind ProcessEngineService (messages: process_protocol).

Contract:
- The child is started by a keeper thread that lives exactly as long as the child: on Linux the child asks
  for SIGKILL when its parent *thread* dies (prctl PR_SET_PDEATHSIG), so it must not be the caller's thread,
  which may be a short-lived worker.
- send() never blocks: commands go through a bounded queue to a sender thread, so a stopped child with a
  full pipe cannot wedge a caller (or the service lock it holds). A full queue means the child stopped
  reading; send() then returns False.
- A reader thread takes the child's messages. Before "ready" it collects the start-up result; after it, it
  hands updates to the service (once the service said deliver()). No message at all (the child sends a
  heartbeat every 0.5 s) for heartbeat_timeout seconds (LOAD_SILENCE_S while loading) is reported once
  through on_lost, as is an unexpected EOF (the child died).
- stop(timeout) returns within timeout (plus the reader's last read): a "shutdown" command, then SIGTERM,
  then SIGKILL, each from what is left of the budget.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import multiprocessing.connection as mpc
import multiprocessing.util
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from nanovllm_tui.engine.serving.process_child import child_main
from nanovllm_tui.engine.serving.process_protocol import ChildOptions, EngineSnapshot, Update, rebuild_exception
from nanovllm_tui.engine.tp.group import describe_exit

LOAD_SILENCE_S = 120.0  # while starting: imports and weight loading may hold the interpreter lock for long
MAX_QUEUED = 10_000  # command messages waiting for the sender before the child counts as not reading
POLL_S = 0.25  # how often the reader looks at the clock when no message comes


def _stop_process(proc: Any, outbox: queue.Queue, timeout: float) -> None:
    """Ask the child to shut down, wait, then SIGTERM / SIGKILL it, all within `timeout` (at least 0.2 s);
    idempotent (also the interpreter-exit hook)."""
    deadline = time.monotonic() + max(timeout, 0.2)
    reserve = min(0.5, max(timeout, 0.2) / 4)  # kept back for SIGTERM, then as much again for SIGKILL

    def left(keep: float) -> float:
        return max(0.0, deadline - keep - time.monotonic())

    if proc.is_alive():
        with contextlib.suppress(queue.Full):  # Full: the child stopped reading; it is killed below
            outbox.put_nowait([("shutdown", left(2 * reserve))])
        proc.join(left(2 * reserve))
    if proc.is_alive():
        proc.terminate()
        proc.join(left(reserve))
    if proc.is_alive():  # stopped (SIGSTOP) or ignoring SIGTERM; SIGKILL ends even a stopped process
        proc.kill()
        proc.join(max(left(0.0), 0.05))


class EngineProcess:
    """Starts the engine process and carries messages both ways; see the module docstring."""

    def __init__(
        self,
        model: str,
        engine_kwargs: dict[str, Any],
        options: ChildOptions,
        heartbeat_timeout: float,
        on_update: Callable[[Update], None],
        on_lost: Callable[[str], None],
    ):
        ctx = mp.get_context("spawn")  # fork after torch is imported is unsafe
        self._conn, child_conn = ctx.Pipe(duplex=True)
        # Not a daemon: a tensor-parallel engine spawns worker processes of its own.
        self.proc = ctx.Process(
            target=child_main,
            name="nanovllm-engine",
            args=(child_conn, model, engine_kwargs, options, os.getpid()),
        )
        self._child_conn = child_conn
        self._heartbeat_timeout = heartbeat_timeout
        self._on_update = on_update
        self._on_lost = on_lost
        self._outbox: queue.Queue[list[tuple] | None] = queue.Queue(MAX_QUEUED)
        self._started = threading.Event()  # start-up is over: _snapshot or _start_error is set
        self._snapshot: EngineSnapshot | None = None
        self._start_error: BaseException | None = None
        self._deliver = threading.Event()  # the service is ready for updates
        self._stopping = False
        self._lost = False  # on_lost was called
        # exitpriority: runs before multiprocessing joins its non-daemon children at interpreter exit.
        self._finalizer = multiprocessing.util.Finalize(
            self, _stop_process, args=(self.proc, self._outbox, 5.0), exitpriority=10
        )
        self._keeper = threading.Thread(target=self._keep, name="nanovllm-engine-keeper", daemon=True)
        self._reader = threading.Thread(target=self._read, name="nanovllm-engine-reader", daemon=True)
        self._sender = threading.Thread(target=self._send_loop, name="nanovllm-engine-sender", daemon=True)
        self._keeper.start()

    # -- start-up --------------------------------------------------------------------------------
    def _keep(self) -> None:
        """Start the child, then stay alive as long as it does (its parent-death signal is tied to this thread)."""
        try:
            self.proc.start()
        except BaseException as exc:
            self._start_error = exc
            self._started.set()
            return
        self._child_conn.close()  # our copy: now the child's death reads as EOF here
        self._reader.start()
        self._sender.start()
        mpc.wait([self.proc.sentinel])

    def wait_ready(self) -> EngineSnapshot:
        """Block until the engine is built; re-raise its start-up error with the same type and message."""
        while not self._started.wait(0.1):  # a short wait: Ctrl+C interrupts a loading app at once
            pass
        if self._start_error is not None:
            raise self._start_error
        assert self._snapshot is not None  # set before _started when there is no error
        return self._snapshot

    def deliver(self) -> None:
        """Start handing updates to on_update (the service has everything _apply needs)."""
        self._deliver.set()

    # -- sending ---------------------------------------------------------------------------------
    def send(self, commands: list[tuple]) -> bool:
        """Queue one message of commands (run together in one engine step); False if the child is not reading."""
        try:
            self._outbox.put_nowait(commands)
        except queue.Full:
            return False
        return True

    def _send_loop(self) -> None:
        while True:
            commands = self._outbox.get()
            if commands is None:
                return
            while len(commands) < 1024:  # what queued up meanwhile goes in the same message
                try:
                    more = self._outbox.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    break
                commands = commands + more
            try:
                self._conn.send(commands)
            except (OSError, ValueError):  # the child is gone: the reader reports it
                return

    # -- reading ---------------------------------------------------------------------------------
    def _read(self) -> None:
        last = time.monotonic()
        try:
            while True:
                if not self._conn.poll(POLL_S):
                    self._check_silence(time.monotonic() - last)
                    continue
                msg = self._conn.recv()
                last = time.monotonic()
                if not self._handle(msg):
                    return
        except (EOFError, OSError):
            pass
        except Exception as exc:  # a broken message must not leave handles hanging
            self._lose(f"reading from the engine process failed ({type(exc).__name__}: {exc})")
            return
        self._exited()

    def _handle(self, msg: tuple) -> bool:
        """Act on one message; False when the child said goodbye (or the start-up failed)."""
        kind = msg[0]
        if kind == "update":
            while not self._deliver.wait(POLL_S):
                if self._stopping:
                    return False
            self._on_update(msg[1])
        elif kind == "ready":
            self._snapshot = msg[1]
            self._started.set()
        elif kind == "init_error":
            self._start_error = rebuild_exception(msg[1])
            self._started.set()
        elif kind == "bye":
            return False
        return True

    def _check_silence(self, silent: float) -> None:
        limit = self._heartbeat_timeout if self._started.is_set() else LOAD_SILENCE_S
        if silent > limit and not self._stopping:
            self._lose(
                f"the engine process stopped responding (no heartbeat for {silent:.1f} s; "
                "stopped by a signal or wedged); restart the engine"
            )

    def _exited(self) -> None:
        """EOF: the child is gone. Unexpected unless stop() is under way."""
        if self._stopping:
            return
        self.proc.join(1.0)
        how = describe_exit(self.proc.exitcode)
        if not self._started.is_set():
            self._start_error = RuntimeError(f"the engine process exited while starting ({how})")
            self._started.set()
        else:
            self._lose(f"the engine process exited unexpectedly ({how})")

    def _lose(self, message: str) -> None:
        if not self._started.is_set():
            self._start_error = RuntimeError(message)
            self._started.set()
        elif not self._lost:
            self._lost = True
            self._on_lost(message)

    # -- stopping --------------------------------------------------------------------------------
    def stop(self, timeout: float) -> None:
        """Stop the child (graceful within `timeout`, else killed) and the threads; returns within ~timeout."""
        self._stopping = True
        self._finalizer.cancel()
        _stop_process(self.proc, self._outbox, timeout)
        with contextlib.suppress(queue.Full):
            self._outbox.put_nowait(None)  # stops the sender
        if threading.current_thread() is not self._reader and self._reader.is_alive():
            self._reader.join(0.2)  # the child is gone: EOF is there to read at once
        self._conn.close()

    @property
    def pid(self) -> int | None:
        return self.proc.pid
