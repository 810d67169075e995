"""EngineService: the online engine. One LLMEngine is stepped on a background thread; any thread submits
requests and reads their token deltas as they are produced, plus one StepStats per engine step.

Contract:
- Every engine call happens on the engine thread. Callers only enqueue commands (under a lock) and read
  immutable snapshots, so a reader never blocks a step. Input is validated in the caller's thread, so a
  bad request raises ValueError from submit() at once, with the engine's message.
- Idle, the thread sleeps on a Condition (no polling); a submitted request is scheduled by the next step.
- An exception inside a step fails that step's requests (LLMEngine.step does that) and is published as a
  "step_error" event; serving goes on. An exception escaping step() is fatal: published once as a "fatal"
  event, every pending request finishes with "error", the loop stops and later submits raise RuntimeError.
- shutdown() stops the thread within its timeout; unfinished requests end with finish_reason "abort".
- Callers never touch the engine: engine_info(), tokenize() and the control methods are the whole interface.
"""

from __future__ import annotations

import gc
import os
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import count
from typing import Any

from nanovllm_tui.engine.config import Config
from nanovllm_tui.engine.llm_engine import LLMEngine
from nanovllm_tui.engine.outputs import RequestOutput
from nanovllm_tui.engine.sampling_params import SamplingParams
from nanovllm_tui.engine.serving.delivery import SHUTDOWN, Live, copy_seq_metrics, end_handle, split_reasoning
from nanovllm_tui.engine.serving.protocol import Prompt
from nanovllm_tui.engine.serving.request_handle import RequestHandle, RequestMetrics
from nanovllm_tui.engine.serving.service_setup import RequestChecker, engine_info_of, make_engine
from nanovllm_tui.engine.serving.step_observers import ObservedService, ServiceEvent, StepObservers
from nanovllm_tui.engine.stats import EngineStats, StepStats
from nanovllm_tui.engine.text.reasoning import ReasoningSplitter


class EngineService(ObservedService):
    """Owns one engine and its step loop thread; see the module docstring for the contract."""

    # What submit() hands out; engine.process_child swaps in a handle that forwards outputs to another process.
    handle_factory: Callable[[str, RequestMetrics, Callable[[str], bool]], RequestHandle] = RequestHandle

    def __init__(
        self,
        llm_or_config: LLMEngine | Config | str | os.PathLike,
        *,
        history_size: int = 2048,
        max_events: int = 256,
        **engine_kwargs: Any,
    ):
        self._engine = make_engine(llm_or_config, engine_kwargs)
        self._info = engine_info_of(self._engine)
        self._checker = RequestChecker(self._engine.config, self._engine.tokenizer)
        self._cond = threading.Condition(threading.Lock())
        self._commands: deque[Callable[[], object]] = deque()  # guarded by _cond
        self._handles: dict[str, RequestHandle] = {}  # live requests, guarded by _cond
        self._holds = 0  # open batch() blocks, guarded by _cond
        self._stopping = False  # shutdown() asked the loop to stop
        self._stopped = False  # the loop is gone (shutdown or fatal)
        self._fatal: str | None = None
        self._ids = count()
        self._active: dict[str, Live] = {}  # engine thread only
        self._busy = False  # engine thread only: unfinished work left
        # Ring buffers written by the engine thread; deque.copy() reads them atomically under the GIL.
        self._observers = StepObservers(history_size, max_events)
        self._last_published: StepStats | None = self._engine.last_step
        self._stats: EngineStats = self._engine.stats()
        self._thread = threading.Thread(target=self._run, name="nanovllm-engine", daemon=True)
        # Everything alive now (torch, Triton, transformers, the model) leaves the cyclic GC's view: otherwise
        # each full collection rescans those ~400k objects, a 0.15-0.25 s pause in which no running request
        # gets a token (three per online benchmark run on an H200, before). shutdown() gives them back.
        gc.collect()
        gc.freeze()
        self._thread.start()

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
        """Queue a request: a prompt string, token ids, or a chat history rendered with the chat template.

        enable_thinking is passed to the chat template (Qwen3). split_reasoning routes <think>…</think> text
        to `reasoning` deltas; None means on for chat requests when the template knows <think> blocks.
        Raises ValueError for bad input and RuntimeError once the service has stopped.
        """
        arrival = time.monotonic()
        sp = sampling_params or SamplingParams()
        ids, splitter = self._checker.prepare(prompt, sp, enable_thinking, split_reasoning)
        with self._cond:
            if self._stopped or self._stopping:
                raise RuntimeError(f"the engine service has stopped ({self._fatal or 'shut down'}); start a new one")
            request_id = self._request_id(request_id, self._handles)
            metrics = RequestMetrics(arrival_time=arrival, num_prompt_tokens=len(ids))
            handle = self.handle_factory(request_id, metrics, self.abort)
            self._handles[request_id] = handle
            self._commands.append(lambda: self._add(handle, ids, sp, splitter))
            self._cond.notify()
        return handle

    def abort(self, request_id: str) -> bool:
        """Finish a request with "abort" (its blocks are freed by the engine thread before the next step).

        False if no live request has this id."""
        with self._cond:
            if request_id not in self._handles or self._stopped:
                return False
            self._commands.append(lambda: self._engine.abort_request(request_id))
            self._cond.notify()
        return True

    # -- control (any thread) --------------------------------------------------------------------
    def set_scheduling_policy(self, policy: str) -> None:
        """Switch the scheduler's policy from the next step on ("mixed" or "prefill_first")."""
        self._check_policy(policy)
        self._command(lambda: self._engine.set_scheduling_policy(policy))

    def set_block_map(self, enabled: bool) -> None:
        """Ask for a BlockMap in every StepStats (costs O(blocks) per step; for the dashboard's heat map)."""
        engine, on = self._engine, bool(enabled)

        def apply() -> None:
            engine.collect_block_map = on

        self._command(apply)

    def reset_prefix_cache(self) -> None:
        """Drop every cached block's hash before the next step: later requests start cold (benchmarks)."""
        self._command(self._engine.block_manager.reset_prefix_cache)

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Hold the requests submitted (and commands given) inside the block, then hand them over at once, so
        they start in the same step as LLM.generate's do, rather than the first racing ahead alone."""
        with self._cond:
            self._holds += 1
        try:
            yield
        finally:
            with self._cond:
                self._holds -= 1
                self._cond.notify()

    def _command(self, fn: Callable[[], object]) -> None:
        with self._cond:
            if self._stopped:
                raise RuntimeError(f"the engine service has stopped ({self._fatal or 'shut down'})")
            self._commands.append(fn)
            self._cond.notify()

    # -- observation (any thread, never blocks the engine) ---------------------------------------
    @property
    def is_running(self) -> bool:
        return self._thread.is_alive() and not self._stopped

    @property
    def thread_native_id(self) -> int | None:
        """OS id of the engine thread (for per-thread CPU accounting)."""
        return self._thread.native_id

    # -- shutdown --------------------------------------------------------------------------------
    def shutdown(self, timeout: float = 5.0, close_engine: bool = True) -> None:
        """Stop the loop (after the step in flight) and end unfinished requests with "abort".

        close_engine also stops the engine's tensor-parallel workers; pass False to reuse the engine."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        # If the step in flight outlives the timeout, fail the handles from here; late outputs are dropped.
        self._fail_all("abort", SHUTDOWN)
        gc.unfreeze()
        if close_engine and not self._thread.is_alive():
            self._engine.shutdown()

    def __enter__(self) -> EngineService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # -- the engine thread -----------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not ((self._commands and not self._holds) or self._busy or self._stopping):
                        self._cond.wait()
                    if self._stopping:
                        break
                    commands = [] if self._holds else list(self._commands)
                    if commands:
                        self._commands.clear()
                for command in commands:
                    command()
                if self._engine.has_unfinished_requests():
                    outputs = self._engine.step()
                    self._stats = self._engine.stats()  # before the deltas: a finished reader sees its blocks freed
                    self._publish(outputs)
                else:
                    self._stats = self._engine.stats()
                self._busy = self._engine.has_unfinished_requests()
        except BaseException as exc:
            self._on_fatal(exc)
        finally:
            if self._fatal is None:
                self._abort_in_engine()
            with self._cond:
                self._stopped = True
            self._fail_all("abort", SHUTDOWN)

    def _abort_in_engine(self) -> None:
        """On shutdown: abort the live requests in the engine too, so it is left clean (and reusable)."""
        try:
            for request_id in list(self._active):
                self._engine.abort_request(request_id)
            if self._engine.has_unfinished_requests():
                outputs = self._engine.step()  # only aborts are pending: no forward runs
                for out in outputs:
                    if out.finish_reason == "abort":
                        out.error = SHUTDOWN
                self._publish(outputs)
        except Exception as exc:  # the handles are failed right after anyway
            self._observers.add_event(ServiceEvent("step_error", time.monotonic(), f"{type(exc).__name__}: {exc}"))

    def _add(
        self, handle: RequestHandle, ids: list[int], sp: SamplingParams, splitter: ReasoningSplitter | None
    ) -> None:
        try:
            seq = self._engine.add_request(ids, sp, handle.request_id, detokenize=True)
        except ValueError as exc:  # validated already; only a race (e.g. an id the engine still holds) lands here
            self._finish_handle(handle, "error", str(exc))
            return
        seq.arrival_time = handle.metrics.arrival_time  # TTFT counts from submit(), not from the engine thread
        self._active[handle.request_id] = Live(handle, splitter, seq)

    def _publish(self, outputs: list[RequestOutput]) -> None:
        """Hand this step's deltas to their handles, then the step's stats to the ring buffer and listeners."""
        now = time.monotonic()
        for out in outputs:
            active = self._active.get(out.request_id)
            if active is None:
                continue
            split_reasoning(active.splitter, out)
            copy_seq_metrics(active, out, now)
            if out.finished:
                del self._active[out.request_id]
                with self._cond:
                    self._handles.pop(out.request_id, None)
            active.handle._put(out)
        step = self._engine.last_step
        if step is None or step is self._last_published or step.num_seqs == 0:
            return  # a step that only delivered aborts/admission errors computed nothing
        self._last_published = step
        if step.error:
            failed = tuple(o.request_id for o in outputs if o.finish_reason == "error")
            self._observers.add_event(ServiceEvent("step_error", now, step.error, failed, self._engine.last_traceback))
        self._observers.publish(step)

    def _finish_handle(self, handle: RequestHandle, reason: str, error: str | None) -> None:
        with self._cond:
            self._handles.pop(handle.request_id, None)
        end_handle(handle, reason, error)

    def _fail_all(self, reason: str, error: str) -> None:
        with self._cond:
            handles = list(self._handles.values())
        for handle in handles:
            self._finish_handle(handle, reason, error)

    def _on_fatal(self, exc: BaseException) -> None:
        message = f"{type(exc).__name__}: {exc}"
        with self._cond:
            self._fatal = message
            self._stopped = True
        self._observers.add_event(
            ServiceEvent("fatal", time.monotonic(), message, tuple(self._active), traceback.format_exc())
        )
        self._fail_all("error", f"the engine stopped on a fatal error: {message}")
