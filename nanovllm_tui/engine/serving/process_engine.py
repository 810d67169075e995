"""The serving half of the engine process: builds the LLM, serves it with an EngineService, and forwards request
outputs and StepStats to the parent in batches (one message per `batch_interval`, not one per token).

The child exits after a "shutdown" command, or when the pipe reaches EOF (the parent died); either way its
EngineService shuts down and stops its TP workers. process_child.child_main runs this after its safety setup.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable
from functools import partial
from multiprocessing.connection import Connection
from typing import Any

from nanovllm_tui.engine.outputs import RequestOutput
from nanovllm_tui.engine.serving.process_child import ChildOut
from nanovllm_tui.engine.serving.process_protocol import (
    ChildOptions,
    EngineSnapshot,
    OutputRecord,
    Update,
    exception_payload,
)
from nanovllm_tui.engine.serving.request_handle import RequestHandle, RequestMetrics
from nanovllm_tui.engine.serving.step_observers import ServiceEvent
from nanovllm_tui.engine.serving.thread_service import EngineService
from nanovllm_tui.engine.stats import EngineStats, StepStats


class _Outbox:
    """Outputs and steps made on the engine thread since the last send; the pump takes them in one swap."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.outputs: list[OutputRecord] = []
        self.steps: list[StepStats] = []

    def put_output(self, record: OutputRecord) -> None:
        with self.lock:
            self.outputs.append(record)
        self.wake.set()

    def put_step(self, step: StepStats) -> None:
        with self.lock:
            self.steps.append(step)
        self.wake.set()

    def take(self) -> tuple[list[OutputRecord], list[StepStats]]:
        with self.lock:
            outputs, steps, self.outputs, self.steps = self.outputs, self.steps, [], []
        return outputs, steps


class _ForwardingHandle(RequestHandle):
    """A handle that queues nothing locally: each delta goes to the outbox with the timings known at that moment."""

    def __init__(self, request_id: str, metrics: RequestMetrics, abort: Callable[[str], bool], outbox: _Outbox):
        super().__init__(request_id, metrics, abort)
        self._outbox = outbox
        self._times_sent = 0

    def _put(self, out: RequestOutput) -> bool:
        with self._lock:
            if self._closed:
                return False
            self._closed = out.finished
            m = self.metrics
            times = m.token_times[self._times_sent :]
            self._times_sent += len(times)
            record = OutputRecord(
                out.request_id,
                out.text,
                out.token_ids,
                out.finished,
                out.finish_reason,
                out.error,
                m.num_cached_tokens,
                m.num_preemptions,
                m.first_token_time,
                times,
                m.finished_time,
            )
        self._outbox.put_output(record)
        if out.finished:
            self._ended.set()
        return True


class _ChildService(EngineService):
    """EngineService whose handles and steps feed the outbox, and whose fatal error wakes the pump."""

    def __init__(self, llm: Any, outbox: _Outbox, options: ChildOptions):
        self.outbox = outbox
        self.handle_factory = partial(_ForwardingHandle, outbox=outbox)
        super().__init__(llm, history_size=options.history_size, max_events=options.max_events)
        self.subscribe(outbox.put_step)

    def _on_fatal(self, exc: BaseException) -> None:
        super()._on_fatal(exc)
        self.outbox.wake.set()


class _Pump:
    """Sends an Update when the engine produced something, at most once per interval (batches fast steps)."""

    def __init__(self, out: ChildOut, service: _ChildService, interval: float):
        self.out, self.service, self.outbox, self.interval = out, service, service.outbox, interval
        self.stop = False
        self._last_send = 0.0
        self._last_stats: EngineStats | None = None
        self._last_event: ServiceEvent | None = None
        self._fatal_sent: str | None = None
        self.thread = threading.Thread(target=self._run, name="nanovllm-pump", daemon=True)

    def _run(self) -> None:
        while not self.stop:
            self.outbox.wake.wait()
            delay = self._last_send + self.interval - time.monotonic()
            if delay > 0 and not self.stop:
                time.sleep(delay)  # let more steps land in this message
            self.outbox.wake.clear()
            if not self.flush():
                return
        self.flush()

    def _new_events(self) -> list[ServiceEvent]:
        snapshot = self.service.events()  # a copy of a bounded ring the engine thread appends to
        if not snapshot or snapshot[-1] is self._last_event:
            return []
        idx = next((i for i in range(len(snapshot) - 1, -1, -1) if snapshot[i] is self._last_event), -1)
        self._last_event = snapshot[-1]
        return snapshot[idx + 1 :]

    def flush(self) -> bool:
        """Send what is new; False if the parent is gone."""
        outputs, steps = self.outbox.take()
        stats = self.service.stats()  # after the outputs: a finished request's blocks show as freed
        events = self._new_events()
        fatal = self.service.fatal_error
        if not (outputs or steps or events or stats is not self._last_stats or fatal != self._fatal_sent):
            return True
        self._last_stats, self._fatal_sent = stats, fatal
        self._last_send = time.monotonic()
        # False: the parent closed the pipe; the main loop sees EOF and exits.
        return self.out.send(("update", Update(outputs, steps, stats, events, fatal)))


_CONTROLS: dict[str, Callable[..., None]] = {
    "policy": EngineService.set_scheduling_policy,
    "block_map": EngineService.set_block_map,
    "reset_prefix_cache": EngineService.reset_prefix_cache,
}


def _run_commands(service: _ChildService, commands: list[tuple]) -> float | None:
    """Run one message's commands (submits start in the same step); returns the timeout if told to shut down."""
    with service.batch():
        for cmd in commands:
            kind = cmd[0]
            if kind == "submit":
                _, request_id, ids, sp, arrival = cmd
                try:
                    handle = service.submit(ids, sp, request_id, split_reasoning=False)
                    handle.metrics.arrival_time = arrival  # held by batch(): the engine sees the caller's time
                except (ValueError, RuntimeError) as exc:  # validated by the parent; a stopped service lands here
                    service.outbox.put_output(
                        OutputRecord(request_id, "", [], True, "error", str(exc), 0, 0, None, [], time.monotonic())
                    )
            elif kind == "abort":
                service.abort(cmd[1])
            elif kind in _CONTROLS:
                with contextlib.suppress(RuntimeError):  # the service stopped on a fatal error; the parent knows
                    _CONTROLS[kind](service, *cmd[1:])
            elif kind == "shutdown":
                return float(cmd[1])
    return None


def serve(conn: Connection, out: ChildOut, model: str, engine_kwargs: dict[str, Any], options: ChildOptions) -> None:
    """Build, report, serve until shutdown or parent EOF."""
    if options.quiet:
        warnings.filterwarnings("ignore")
    try:
        import torch

        from nanovllm_tui.engine.config import with_serving_defaults
        from nanovllm_tui.engine.llm import LLM

        if options.torch_threads:
            torch.set_num_threads(options.torch_threads)
        llm = LLM(model, **with_serving_defaults(engine_kwargs))
        service = _ChildService(llm, _Outbox(), options)
    except BaseException as exc:
        out.send(("init_error", exception_payload(exc)))
        return
    out.send(("ready", EngineSnapshot(llm.config, service.engine_info(), service.stats())))
    if options.quiet:  # nothing may scribble over the parent's UI; errors travel over the pipe
        sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (kept open for the process's life)
    pump = _Pump(out, service, options.batch_interval)
    pump.thread.start()
    timeout = 5.0
    while True:
        try:
            commands = conn.recv()
        except (EOFError, OSError):  # the parent died: stop serving
            break
        told = _run_commands(service, commands)
        if told is not None:
            timeout = told
            break
    service.shutdown(timeout)
    pump.stop = True
    pump.outbox.wake.set()
    pump.thread.join(timeout)
    out.send(("bye",))
