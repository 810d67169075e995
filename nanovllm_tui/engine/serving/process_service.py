"""ProcessEngineService: EngineService's interface with the engine in its own process, so a busy caller (the
Textual app) never competes with the engine for the interpreter lock.

Contract (what differs from EngineService; the rest is the same):
- The child (process_child, started with the 'spawn' method) builds the LLM and runs an EngineService; a
  start-up error is re-raised here with the same type and message. Requests are validated and tokenized here
  with the engine's config (sent at start-up) and the tokenizer, so submit() raises ValueError in the caller's
  thread. This process holds no engine.
- Outputs and StepStats arrive in batches (one message per ~15 ms while busy) on a reader thread that feeds
  ordinary RequestHandles and a local stats ring; timings are the engine's (time.monotonic is system-wide).
  Reasoning splitting runs here. subscribe() listeners run on the reader thread.
- Commands reach the child through a sender thread (process_link): no method blocks on the pipe.
- If the child dies, or sends nothing (not even its heartbeat) for `heartbeat_timeout` seconds (stopped or
  wedged), fatal_error says so, a "fatal" event is published, every open request ends with "error" and
  submit() raises RuntimeError. shutdown(timeout) stops the child, killing it if it must, within timeout + ~2 s.
  The child dies with this process at any stage (process_child), and is stopped at interpreter exit.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import count
from typing import Any

from nanovllm_tui.engine.outputs import RequestOutput
from nanovllm_tui.engine.sampling_params import SamplingParams
from nanovllm_tui.engine.serving.delivery import SHUTDOWN, Live, end_handle, split_reasoning
from nanovllm_tui.engine.serving.process_link import EngineProcess
from nanovllm_tui.engine.serving.process_protocol import ChildOptions, Update
from nanovllm_tui.engine.serving.protocol import Prompt
from nanovllm_tui.engine.serving.request_handle import RequestHandle, RequestMetrics
from nanovllm_tui.engine.serving.service_setup import RequestChecker
from nanovllm_tui.engine.serving.step_observers import ObservedService, ServiceEvent, StepObservers
from nanovllm_tui.engine.text.tokenizer import load_tokenizer

HEARTBEAT_TIMEOUT_S = 4.0  # the child beats every 0.5 s; this much silence means stopped or wedged


class ProcessEngineService(ObservedService):
    """EngineService's interface over an engine process; see the module docstring for the contract."""

    def __init__(
        self,
        model: str | os.PathLike,
        *,
        torch_threads: int | None = None,
        quiet: bool = False,
        batch_interval: float = 0.015,
        history_size: int = 2048,
        max_events: int = 256,
        heartbeat_timeout: float = HEARTBEAT_TIMEOUT_S,
        **engine_kwargs: Any,
    ):
        if torch_threads is not None and torch_threads < 1:
            raise ValueError(f"torch_threads={torch_threads} must be >= 1 (or None for torch's default)")
        if not heartbeat_timeout > 1.0:
            raise ValueError(f"heartbeat_timeout={heartbeat_timeout} must be > 1 s (the child beats every 0.5 s)")
        options = ChildOptions(torch_threads, quiet, batch_interval, history_size, max_events)
        self._lock = threading.Lock()  # guards the fields below up to _fatal
        self._live: dict[str, Live] = {}
        self._held: list[tuple] = []  # commands given inside batch()
        self._holds = 0
        self._stopping = False
        self._stopped = False
        self._fatal: str | None = None
        self._ids = count()
        self._observers = StepObservers(history_size, max_events)
        self._child = EngineProcess(
            os.fspath(model), engine_kwargs, options, heartbeat_timeout, self._apply, self._on_fatal
        )
        try:
            snapshot = self._child.wait_ready()
            tokenizer = load_tokenizer(snapshot.config.model)
        except BaseException:  # a start-up error, or Ctrl+C while loading: the child has nothing worth waiting for
            self._child.stop(0.0)
            raise
        self._checker = RequestChecker(snapshot.config, tokenizer)
        self._info = snapshot.info
        self._stats = snapshot.stats
        self._child.deliver()

    # -- requests (any thread) -------------------------------------------------------------------
    def submit(
        self,
        prompt: Prompt,
        sampling_params: SamplingParams | None = None,
        request_id: str | None = None,
        *,
        enable_thinking: bool | None = None,
        split_reasoning: bool | None = None,
    ) -> RequestHandle:
        """Queue a request (see EngineService.submit). Raises ValueError for bad input, RuntimeError once stopped."""
        arrival = time.monotonic()
        sp = sampling_params or SamplingParams()
        ids, splitter = self._checker.prepare(prompt, sp, enable_thinking, split_reasoning)
        with self._lock:
            self._check_running()
            request_id = self._request_id(request_id, self._live)
            metrics = RequestMetrics(arrival_time=arrival, num_prompt_tokens=len(ids))
            handle = RequestHandle(request_id, metrics, self.abort)
            self._live[request_id] = Live(handle, splitter)
            if not self._send(("submit", request_id, ids, sp, arrival)):
                del self._live[request_id]
                raise RuntimeError("the engine process is not reading its commands (stopped or wedged); restart it")
        return handle

    def abort(self, request_id: str) -> bool:
        """Finish a request with "abort" (the child frees its blocks before its next step); False if not live."""
        with self._lock:
            if request_id not in self._live or self._stopped:
                return False
            return self._send(("abort", request_id))

    # -- control (any thread) --------------------------------------------------------------------
    def set_scheduling_policy(self, policy: str) -> None:
        """Switch the scheduler's policy from the next step on ("mixed" or "prefill_first")."""
        self._check_policy(policy)
        self._command(("policy", policy))

    def set_block_map(self, enabled: bool) -> None:
        """Ask for a BlockMap in every StepStats (for the dashboard's heat map)."""
        self._command(("block_map", bool(enabled)))

    def reset_prefix_cache(self) -> None:
        """Drop every cached block's hash before the next step: later requests start cold (benchmarks)."""
        self._command(("reset_prefix_cache",))

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Hold the requests and commands given inside the block, then send them as one message: they start
        in the same engine step."""
        with self._lock:
            self._holds += 1
        try:
            yield
        finally:
            with self._lock:
                self._holds -= 1
                held: list[tuple] = []
                if not self._holds:
                    held, self._held = self._held, []
                sent = not held or self._stopped or self._child.send(held)
            if not sent:
                self._on_fatal("the engine process is not reading its commands (stopped or wedged)")

    def _command(self, cmd: tuple) -> None:
        with self._lock:
            self._check_running()
            sent = self._send(cmd)
        if not sent:
            self._on_fatal("the engine process is not reading its commands (stopped or wedged)")
            self._check_running()

    def _check_running(self) -> None:
        if self._stopped or self._stopping:
            raise RuntimeError(f"the engine service has stopped ({self._fatal or 'shut down'}); start a new one")

    def _send(self, cmd: tuple) -> bool:
        """Send one command now, or hold it inside batch(); called with _lock held (keeps commands in order).
        Never blocks; False if the child stopped reading."""
        if self._holds:
            self._held.append(cmd)
            return True
        return self._child.send([cmd])

    # -- observation (any thread) ----------------------------------------------------------------
    @property
    def is_running(self) -> bool:
        return not self._stopped and self._child.proc.is_alive()

    @property
    def pid(self) -> int | None:
        """OS id of the engine process (for per-process CPU accounting)."""
        return self._child.pid

    # -- shutdown --------------------------------------------------------------------------------
    def shutdown(self, timeout: float = 5.0, close_engine: bool = True) -> None:
        """Stop the engine process (after the step in flight); unfinished requests end with "abort". Returns
        within `timeout` (a fraction of a second more at most), killing the process if it must.

        close_engine is accepted for EngineService compatibility; the engine always goes with its process."""
        with self._lock:
            self._stopping = True
        self._child.stop(timeout)
        with self._lock:
            self._stopped = True
        self._fail_all("abort", SHUTDOWN)

    def __enter__(self) -> ProcessEngineService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # -- the reader thread -----------------------------------------------------------------------
    def _apply(self, up: Update) -> None:
        """Hand one batch to the handles, the stats ring and the listeners (as EngineService._publish does)."""
        self._stats = up.stats  # before the deltas: a reader that sees its request finished sees its blocks freed
        for rec in up.outputs:
            with self._lock:
                live = self._live.pop(rec.request_id) if rec.finished else self._live.get(rec.request_id)
            if live is None:
                continue
            out = RequestOutput(rec.request_id, rec.text, rec.token_ids, "", rec.finished, rec.finish_reason, rec.error)
            split_reasoning(live.splitter, out)
            m = live.handle.metrics
            m.num_cached_tokens, m.num_preemptions = rec.num_cached_tokens, rec.num_preemptions
            m.first_token_time = rec.first_token_time
            m.token_times.extend(rec.token_times)
            if rec.finished:
                m.finished_time = rec.finished_time
            live.handle._put(out)
        for event in up.events:
            self._observers.add_event(event)
        for step in up.steps:
            self._observers.publish(step)
        if up.fatal is not None and self._fatal is None:
            with self._lock:
                self._fatal, self._stopped = up.fatal, True
            self._fail_all("error", f"the engine stopped on a fatal error: {up.fatal}")

    def _on_fatal(self, message: str) -> None:
        """The child died or went silent: publish it once and end every open request with "error"."""
        with self._lock:
            if self._fatal is not None or self._stopping:
                return
            self._fatal, self._stopped = message, True
            ids = tuple(self._live)
        self._observers.add_event(ServiceEvent("fatal", time.monotonic(), message, ids))
        self._fail_all("error", f"the engine stopped on a fatal error: {message}")

    def _fail_all(self, reason: str, error: str) -> None:
        with self._lock:
            lives, self._live = list(self._live.values()), {}
        for live in lives:
            end_handle(live.handle, reason, error)
