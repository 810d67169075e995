"""Service: the one typed interface of the online engine. The thread service (EngineService) and the process
service (ProcessEngineService) both implement it; the app, `serve` and the bench use nothing else.

This module imports no torch, so callers can type against it cheaply.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from nanovllm_tui.engine.sampling_params import SamplingParams
    from nanovllm_tui.engine.serving.request_handle import RequestHandle
    from nanovllm_tui.engine.serving.step_observers import ServiceEvent
    from nanovllm_tui.engine.stats import EngineStats, StepStats

# A prompt string, prompt token ids, or a chat history rendered with the model's chat template.
Prompt = str | list[int] | Sequence[Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """What engine a service runs, fixed for its lifetime (the dashboard header, `serve`'s /v1/models)."""

    model: str  # the model dir (the app shows a display name: dataclasses.replace(info, model=name))
    device: str  # "cpu", "cuda:0", ...
    dtype: str  # "float32", "bfloat16", ...
    block_size: int
    num_blocks: int
    tensor_parallel_size: int
    max_model_len: int
    prefix_caching: bool
    attention_backend: str  # "torch", "triton", "flash-attn"
    scheduling_policy: str  # the policy at start; set_scheduling_policy changes it later
    max_num_seqs: int
    max_num_batched_tokens: int
    mixed_prefill_tokens: int  # the mixed policy's cap on prompt tokens beside decodes (0: none)
    vocab_size: int
    has_reasoning_template: bool  # the chat template knows <think> blocks (Qwen3's enable_thinking)


@runtime_checkable
class Service(Protocol):
    """The online engine as its callers see it. Every method may be called from any thread."""

    def submit(
        self,
        prompt: Prompt,
        sampling_params: SamplingParams | None = None,
        request_id: str | None = None,
        *,
        enable_thinking: bool | None = None,
        split_reasoning: bool | None = None,
    ) -> RequestHandle:
        """Queue a request; ValueError for bad input, RuntimeError once the service has stopped."""
        ...

    def abort(self, request_id: str) -> bool:
        """Finish a live request with "abort"; False if it is not live."""
        ...

    def tokenize(self, text: str) -> list[int]:
        """The model's token ids of `text` (no special tokens added)."""
        ...

    def engine_info(self) -> EngineInfo: ...

    def stats(self) -> EngineStats:
        """Cumulative counters as of the last step the service has seen."""
        ...

    def stats_history(self, since_step: int | None = None) -> list[StepStats]:
        """Recent StepStats, oldest first (only steps after `since_step` if given)."""
        ...

    def events(self) -> list[ServiceEvent]: ...

    def subscribe(self, listener: Callable[[StepStats], None]) -> Callable[[], None]:
        """Call `listener` for every step (on a service thread; it must not block); returns an unsubscribe."""
        ...

    def set_scheduling_policy(self, policy: str) -> None: ...

    def set_block_map(self, enabled: bool) -> None: ...

    def reset_prefix_cache(self) -> None:
        """Drop every cached-evictable block's hash before the next step (benchmarks start cold with it)."""
        ...

    def batch(self) -> AbstractContextManager[None]:
        """Hold requests submitted inside the block and hand them to the engine together."""
        ...

    @property
    def is_running(self) -> bool: ...

    @property
    def fatal_error(self) -> str | None: ...

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop the engine; returns within about `timeout` seconds."""
        ...
