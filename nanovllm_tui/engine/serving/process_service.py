"""ProcessEngineService: EngineService's interface with the engine in its own process, so a busy caller (the
Textual app) never competes with the engine for the interpreter lock.

Contract (what differs from EngineService; the rest is the same):
- The child (engine.process_child, started with the 'spawn' method) builds the LLM and runs an EngineService;
  a start-up error is re-raised here with the same type and message. Requests are validated and tokenized
  here (this process loads only the tokenizer), so submit() raises ValueError in the caller's thread.
- Outputs and StepStats arrive in batches (one message per ~15 ms while busy) on a reader thread that feeds
  ordinary RequestHandles and a local stats ring; timings are the engine's (time.monotonic is system-wide).
  Reasoning splitting runs here. subscribe() listeners run on the reader thread.
- If the child dies, fatal_error names how, every open request ends with "error", and submit() raises
  RuntimeError. shutdown() stops and joins the child (killing it if it hangs); the child exits by itself
  when this process dies (its pipe reaches EOF), and a finalizer stops it at interpreter exit.
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.util
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import count
from typing import Any

from nanovllm_tui.engine.config import POLICIES
from nanovllm_tui.engine.llm_engine import LLMEngine
from nanovllm_tui.engine.outputs import RequestOutput
from nanovllm_tui.engine.sampling_params import SamplingParams
from nanovllm_tui.engine.serving.process_child import child_main
from nanovllm_tui.engine.serving.process_protocol import ChildOptions, EngineSnapshot, Update, rebuild_exception
from nanovllm_tui.engine.serving.request_handle import RequestHandle, RequestMetrics
from nanovllm_tui.engine.serving.service_setup import Prompt, prepare_request
from nanovllm_tui.engine.serving.step_observers import ObservedService, ServiceEvent, StepObservers
from nanovllm_tui.engine.serving.thread_service import _SHUTDOWN
from nanovllm_tui.engine.stats import EngineStats
from nanovllm_tui.engine.text.chat import template_has_reasoning
from nanovllm_tui.engine.text.reasoning import ReasoningSplitter
from nanovllm_tui.engine.text.tokenizer import load_tokenizer
from nanovllm_tui.engine.tp.group import describe_exit


class EngineProxy:
    """This process's view of the child's engine: config, tokenizer and the request checks that need only those.

    `model_runner` and `block_manager` are snapshots with the fields EngineInfo.from_llm reads."""

    tokenize = LLMEngine.tokenize
    validate_request = LLMEngine.validate_request

    def __init__(self, snapshot: EngineSnapshot, tokenizer: Any):
        self.config = snapshot.config
        self.tokenizer = tokenizer
        self.model_runner = snapshot.runner
        self.block_manager = snapshot.blocks


@dataclass(slots=True)
class _Live:
    handle: RequestHandle
    splitter: ReasoningSplitter | None


def _stop_child(proc: Any, conn: Any, send_lock: threading.Lock, timeout: float) -> None:
    """Ask the child to shut down, wait, then terminate/kill it; idempotent (also the interpreter-exit finalizer)."""
    if proc.is_alive():
        locked = send_lock.acquire(timeout=1.0)  # a message half-sent by another thread would garble this one
        try:
            conn.send([("shutdown", timeout)])
        except (OSError, ValueError):
            pass
        finally:
            if locked:
                send_lock.release()
        proc.join(timeout + 2.0)
    if proc.is_alive():
        proc.terminate()
        proc.join(2.0)
    if proc.is_alive():
        proc.kill()
        proc.join(2.0)
    conn.close()


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
        **engine_kwargs: Any,
    ):
        if torch_threads is not None and torch_threads < 1:
            raise ValueError(f"torch_threads={torch_threads} must be >= 1 (or None for torch's default)")
        options = ChildOptions(torch_threads, quiet, batch_interval, history_size, max_events)
        ctx = mp.get_context("spawn")  # fork after torch is imported is unsafe
        self._conn, child_conn = ctx.Pipe(duplex=True)
        # Not a daemon: a tensor-parallel engine spawns worker processes of its own.
        self._proc = ctx.Process(
            target=child_main, name="nanovllm-engine", args=(child_conn, os.fspath(model), engine_kwargs, options)
        )
        self._proc.start()
        child_conn.close()  # our copy; now the child's death reads as EOF here
        self._lock = threading.Lock()  # guards the live requests and every send on the pipe
        # exitpriority: runs before multiprocessing joins its non-daemon children at interpreter exit.
        self._finalizer = multiprocessing.util.Finalize(
            self, _stop_child, args=(self._proc, self._conn, self._lock, 5.0), exitpriority=10
        )
        try:
            snapshot = self._wait_ready()
            tokenizer = load_tokenizer(snapshot.config.model)
        except BaseException:  # a start-up error, or Ctrl+C while loading: the child has nothing worth waiting for
            self._finalizer.cancel()
            _stop_child(self._proc, self._conn, self._lock, 0.0)
            raise
        self.engine = EngineProxy(snapshot, tokenizer)
        self._reasoning_template = template_has_reasoning(tokenizer)
        self._live: dict[str, _Live] = {}  # guarded by _lock
        self._held: list[tuple] = []  # commands given inside batch(), guarded by _lock
        self._holds = 0
        self._ids = count()
        self._stopping = False
        self._stopped = False
        self._fatal: str | None = None
        self._stats: EngineStats = snapshot.stats
        self._observers = StepObservers(history_size, max_events)
        self._reader = threading.Thread(target=self._read, name="nanovllm-engine-reader", daemon=True)
        self._reader.start()

    def _wait_ready(self) -> EngineSnapshot:
        try:
            kind, payload = self._conn.recv()
        except (EOFError, OSError):
            self._proc.join(2.0)
            raise RuntimeError(
                f"the engine process exited while starting ({describe_exit(self._proc.exitcode)})"
            ) from None
        if kind == "init_error":
            raise rebuild_exception(payload)
        return payload

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
        ids, splitter = prepare_request(
            self.engine, prompt, sp, enable_thinking, split_reasoning, self._reasoning_template
        )
        with self._lock:
            self._check_running()
            if request_id is None:
                request_id = f"req-{next(self._ids)}"
                while request_id in self._live:
                    request_id = f"req-{next(self._ids)}"
            elif request_id in self._live:
                raise ValueError(f"request_id {request_id!r} is already in use; pass a unique id or None")
            handle = RequestHandle(
                request_id, RequestMetrics(arrival_time=arrival, num_prompt_tokens=len(ids)), self.abort
            )
            self._live[request_id] = _Live(handle, splitter)
            try:
                self._send(("submit", request_id, ids, sp, arrival))
            except RuntimeError:
                del self._live[request_id]
                raise
        return handle

    def abort(self, request_id: str) -> bool:
        """Finish a request with "abort" (the child frees its blocks before its next step); False if not live."""
        with self._lock:
            if request_id not in self._live or self._stopped:
                return False
            try:
                self._send(("abort", request_id))
            except RuntimeError:
                return False
        return True

    # -- control (any thread) --------------------------------------------------------------------
    def set_scheduling_policy(self, policy: str) -> None:
        """Switch the scheduler's policy from the next step on ("mixed" or "prefill_first")."""
        if policy not in POLICIES:
            raise ValueError(f"scheduling policy {policy!r}; choose one of {', '.join(POLICIES)}")
        self._command(("policy", policy))
        self.engine.config.scheduling_policy = policy

    def set_block_map(self, enabled: bool) -> None:
        """Ask for a BlockMap in every StepStats (for the dashboard's heat map)."""
        self._command(("block_map", bool(enabled)))

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
                if not self._holds and self._held and not self._stopped:
                    held, self._held = self._held, []
                    try:
                        self._conn.send(held)
                    except (OSError, ValueError):
                        pass  # the reader sees the child gone and fails these requests

    def _command(self, cmd: tuple) -> None:
        with self._lock:
            self._check_running()
            self._send(cmd)

    def _check_running(self) -> None:
        if self._stopped or self._stopping:
            raise RuntimeError(f"the engine service has stopped ({self._fatal or 'shut down'}); start a new one")

    def _send(self, cmd: tuple) -> None:
        """Send one command now, or hold it inside batch(); called with _lock held (keeps commands in order)."""
        if self._holds:
            self._held.append(cmd)
            return
        try:
            self._conn.send([cmd])
        except (OSError, ValueError) as exc:
            raise RuntimeError(
                f"the engine process is gone ({type(exc).__name__}: {exc}); start a new service"
            ) from None

    # -- observation (any thread) ----------------------------------------------------------------
    @property
    def is_running(self) -> bool:
        return not self._stopped and self._proc.is_alive()

    @property
    def pid(self) -> int | None:
        """OS id of the engine process (for per-process CPU accounting)."""
        return self._proc.pid

    # -- shutdown --------------------------------------------------------------------------------
    def shutdown(self, timeout: float = 5.0, close_engine: bool = True) -> None:
        """Stop the engine process (after the step in flight); unfinished requests end with "abort".

        close_engine is accepted for EngineService compatibility; the engine always goes with its process."""
        with self._lock:
            self._stopping = True
        self._finalizer.cancel()
        _stop_child(self._proc, self._conn, self._lock, timeout)
        if threading.current_thread() is not self._reader:
            self._reader.join(timeout)
        with self._lock:
            self._stopped = True
        self._fail_all("abort", _SHUTDOWN)

    def __enter__(self) -> ProcessEngineService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # -- the reader thread -----------------------------------------------------------------------
    def _read(self) -> None:
        try:
            while True:
                msg = self._conn.recv()
                if msg[0] == "update":
                    self._apply(msg[1])
                elif msg[0] == "bye":
                    break
        except (EOFError, OSError):
            pass
        except Exception as exc:  # a broken message must not leave handles hanging
            self._on_fatal(f"reading from the engine process failed ({type(exc).__name__}: {exc})")
            return
        if not self._stopping:
            self._proc.join(1.0)
            self._on_fatal(f"the engine process exited unexpectedly ({describe_exit(self._proc.exitcode)})")

    def _apply(self, up: Update) -> None:
        """Hand one batch to the handles, the stats ring and the listeners (as EngineService._publish does)."""
        self._stats = up.stats  # before the deltas: a reader that sees its request finished sees its blocks freed
        for rec in up.outputs:
            with self._lock:
                live = self._live.pop(rec.request_id) if rec.finished else self._live.get(rec.request_id)
            if live is None:
                continue
            out = RequestOutput(rec.request_id, rec.text, rec.token_ids, "", rec.finished, rec.finish_reason, rec.error)
            if live.splitter is not None:
                out.text, out.reasoning = live.splitter.feed(out.text)
                if out.finished:
                    text, reasoning = live.splitter.flush()
                    out.text += text
                    out.reasoning += reasoning
            m = live.handle.metrics
            m.num_cached_tokens, m.num_preemptions, m.first_token_time = (
                rec.num_cached_tokens,
                rec.num_preemptions,
                rec.first_token_time,
            )
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
        with self._lock:
            if self._fatal is None:
                self._fatal = message
            self._stopped = True
            ids = tuple(self._live)
        self._observers.add_event(ServiceEvent("fatal", time.monotonic(), message, ids))
        self._fail_all("error", f"the engine stopped on a fatal error: {message}")

    def _fail_all(self, reason: str, error: str) -> None:
        with self._lock:
            lives, self._live = list(self._live.values()), {}
        now = time.monotonic()
        for live in lives:
            if live.handle.metrics.finished_time is None:
                live.handle.metrics.finished_time = now
            live.handle._put(RequestOutput(live.handle.request_id, finished=True, finish_reason=reason, error=error))
