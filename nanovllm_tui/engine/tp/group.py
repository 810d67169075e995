"""The tensor-parallel worker processes as rank 0 sees them: start-up handshakes, death watch, and teardown."""

from __future__ import annotations

import contextlib
import multiprocessing.connection as mpc
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import torch.distributed as dist

from nanovllm_tui.engine.tp.channel import StepChannel

JOIN_TIMEOUT_S = 3.0
DESTROY_TIMEOUT_S = 10.0


class EngineDeadError(RuntimeError):
    """The tensor-parallel group broke (a worker died, or a step failed part-way); the engine has stopped."""


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _destroy_group(procs: list) -> None:
    """destroy_process_group on a helper thread; abort the group if it has not finished in time."""

    def destroy() -> None:
        # A broken group (dead peer) may refuse a clean teardown; it is gone either way.
        with contextlib.suppress(Exception):
            dist.destroy_process_group()

    t = threading.Thread(target=destroy, name="tp-destroy", daemon=True)
    t.start()
    t.join(DESTROY_TIMEOUT_S)
    if t.is_alive():
        for p in procs:
            if p.is_alive():
                p.kill()
        abort = getattr(dist.distributed_c10d, "_abort_process_group", None)
        if abort is not None:
            with contextlib.suppress(Exception):
                abort()
        t.join(DESTROY_TIMEOUT_S)


class WorkerGroup:
    """The worker processes, their pipes and the step channel; close() is idempotent and safe at exit."""

    def __init__(self, procs: list, conns: list, channel: StepChannel, backend: str):
        self.procs, self.conns, self.channel, self.backend = procs, conns, channel, backend
        self.closed = False
        self.pg_ours = False
        self.reason: str | None = None
        self._wake_r, self._wake_w = os.pipe()
        self._watchdog: threading.Thread | None = None
        self.release: Callable[[], None] | None = None  # rank 0's graph release, run before the teardown

    def start_watchdog(self) -> None:
        self._watchdog = threading.Thread(target=self._watch, name="tp-watchdog", daemon=True)
        self._watchdog.start()

    def _watch(self) -> None:
        """Notice a dead worker at once; on NCCL abort the group so rank 0 is not stuck in a collective forever."""
        mpc.wait([p.sentinel for p in self.procs] + [self._wake_r])
        if self.closed:
            return
        self.reason = self.death_reason()
        if self.backend == "nccl":
            abort = getattr(dist.distributed_c10d, "_abort_process_group", None)
            if abort is not None:
                with contextlib.suppress(Exception):  # best effort: the step will still fail on the collective timeout
                    abort()

    def death_reason(self, wait_s: float = 0.0) -> str | None:
        """'worker rank R died (how): its last error' for the first dead worker, waiting up to wait_s for one."""
        deadline = time.monotonic() + wait_s
        while True:
            for rank, (proc, conn) in enumerate(zip(self.procs, self.conns), start=1):
                if proc.exitcode is None:
                    continue
                message = ""
                try:
                    while conn.poll(0):
                        kind, payload = conn.recv()
                        if kind == "error":
                            message = ": " + payload.strip().splitlines()[-1]
                except (EOFError, OSError):
                    pass
                return f"tensor-parallel worker rank {rank} died ({describe_exit(proc.exitcode)}){message}"
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def wait_for(self, kind: str, timeout_s: float) -> list[Any]:
        """Each worker's next message of `kind` (start-up handshake); raises if a worker dies or reports an error."""
        results: list[Any] = [None] * len(self.procs)
        pending = set(range(len(self.procs)))
        deadline = time.monotonic() + timeout_s
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise EngineDeadError(f"tensor-parallel workers did not start within {timeout_s:.0f} s")
            ready = mpc.wait([self.conns[i] for i in pending] + [self.procs[i].sentinel for i in pending], left)
            for i in list(pending):
                if self.conns[i] in ready or self.conns[i].poll(0):
                    try:
                        got, payload = self.conns[i].recv()
                    except EOFError:
                        got, payload = "error", "the worker exited"
                    if got == "error":
                        raise EngineDeadError(
                            f"tensor-parallel worker rank {i + 1} failed to start: {payload.strip().splitlines()[-1]}"
                        )
                    if got == kind:
                        results[i] = payload
                        pending.discard(i)
                elif self.procs[i].sentinel in ready:
                    raise EngineDeadError(self.death_reason(wait_s=0.5) or f"tensor-parallel worker rank {i + 1} died")
        return results

    def close(self) -> None:
        """Tell workers to exit and tear the process group down on every rank at once, then reap the workers.

        The teardown is concurrent (rank 0 destroys its group while the workers destroy theirs): with CUDA
        graphs that captured NCCL collectives, destroying one rank's communicator waits for its peers, so
        destroying it only after the workers were gone hung (2xH200). A teardown that still hangs (a dead
        peer) is aborted after DESTROY_TIMEOUT_S.
        """
        if self.closed:
            return
        self.closed = True
        os.write(self._wake_w, b"x")
        if any(p.is_alive() for p in self.procs):
            with contextlib.suppress(Exception):
                self.channel.send_exit()
        if self.release is not None:
            with contextlib.suppress(Exception):  # a broken device: the teardown below still has to run
                self.release()
        if self.pg_ours and dist.is_initialized():
            _destroy_group(self.procs)
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        for p in self.procs:
            p.join(max(0.0, deadline - time.monotonic()))
        for p in self.procs:
            if p.is_alive():
                p.kill()
                p.join(1.0)
        self.channel.close()
        for c in self.conns:
            c.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
