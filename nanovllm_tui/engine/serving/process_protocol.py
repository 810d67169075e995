"""The messages between ProcessEngineService (the parent) and its engine process (engine.process_child).

One duplex multiprocessing Pipe carries pickled tuples:
  parent -> child: a list of commands, run together inside EngineService.batch() (so submits share a step):
      ("submit", request_id, token_ids, SamplingParams, arrival_time) | ("abort", request_id)
      | ("policy", name) | ("block_map", enabled) | ("reset_prefix_cache",) | ("shutdown", timeout)
  child -> parent: ("init_error", ExceptionPayload) | ("ready", EngineSnapshot) | ("update", Update) | ("bye",)
      | ("alive",): a heartbeat every ChildOptions.heartbeat_interval from the child's start, loading included,
        sent by a thread that needs no engine lock; a child silent for longer than the parent's limit is stopped
        (SIGSTOP) or its interpreter is wedged.
"""

from __future__ import annotations

import importlib
import pickle
import traceback
from dataclasses import dataclass
from typing import NamedTuple

from nanovllm_tui.engine.config import Config
from nanovllm_tui.engine.serving.protocol import EngineInfo
from nanovllm_tui.engine.serving.step_observers import ServiceEvent
from nanovllm_tui.engine.stats import EngineStats, StepStats


@dataclass(frozen=True, slots=True)
class ChildOptions:
    """How the engine process runs (the engine's own options travel separately, as LLM keyword arguments)."""

    torch_threads: int | None = None  # torch intra-op threads in the engine process; None = torch's default
    quiet: bool = False  # ignore library warnings; after start-up, stray prints go to /dev/null (not over a UI)
    batch_interval: float = 0.015  # seconds: at most one update message per interval while the engine is busy
    history_size: int = 2048
    max_events: int = 256
    heartbeat_interval: float = 0.5  # seconds between ("alive",) messages


@dataclass(frozen=True, slots=True)
class EngineSnapshot:
    """Sent once the engine is built: the config (the parent validates requests with it and the tokenizer),
    the engine's description and its first stats."""

    config: Config
    info: EngineInfo
    stats: EngineStats


class OutputRecord(NamedTuple):
    """One RequestOutput delta plus the request's timings as of that delta (new token times only)."""

    request_id: str
    text: str
    token_ids: list[int]
    finished: bool
    finish_reason: str | None
    error: str | None
    num_cached_tokens: int
    num_preemptions: int
    first_token_time: float | None
    token_times: list[float]
    finished_time: float | None


class Update(NamedTuple):
    """Everything that happened since the last update; stats are read after the outputs were taken."""

    outputs: list[OutputRecord]
    steps: list[StepStats]
    stats: EngineStats
    events: list[ServiceEvent]
    fatal: str | None


class ExceptionPayload(NamedTuple):
    """An exception made portable: pickled when it survives a round trip, else rebuilt from type and message."""

    pickled: bytes | None
    module: str
    qualname: str
    message: str
    traceback: str


def exception_payload(exc: BaseException) -> ExceptionPayload:
    data: bytes | None = None
    try:
        pickled = pickle.dumps(exc)
        pickle.loads(pickled)
        data = pickled
    except Exception:  # e.g. an exception class whose __init__ wants other arguments
        data = None
    return ExceptionPayload(
        data, type(exc).__module__, type(exc).__qualname__, str(exc), "".join(traceback.format_exception(exc))
    )


def rebuild_exception(payload: ExceptionPayload) -> BaseException:
    """The child's exception with the same type and message, its traceback attached as a note."""
    exc: BaseException | None = None
    if payload.pickled is not None:
        try:
            exc = pickle.loads(payload.pickled)
        except Exception:
            exc = None
    if exc is None:
        try:
            cls = getattr(importlib.import_module(payload.module), payload.qualname)
            exc = cls(payload.message) if isinstance(cls, type) and issubclass(cls, Exception) else None
        except Exception:
            exc = None
    if exc is None:
        exc = RuntimeError(f"{payload.qualname}: {payload.message}")
    if hasattr(exc, "add_note"):  # Python >= 3.11: --debug tracebacks show where the child failed
        exc.add_note(f"raised in the engine process:\n{payload.traceback}")
    return exc
