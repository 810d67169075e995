"""ChatBackend: the part of the Service protocol that a remote server can honour over HTTP.

Service (engine/serving/protocol.py) also promises per-step StepStats, block counts, EngineInfo (device, dtype,
block size), policy switching and prefix-cache resets: an OpenAI-compatible server exposes none of these, so
RemoteService implements ChatBackend (plus tokenize and batch) and offers RemoteSnapshots instead of StepStats.
Every Service is a ChatBackend, so a chat view typed against ChatBackend works with both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from nanovllm_tui.engine.sampling_params import SamplingParams
    from nanovllm_tui.engine.serving.protocol import Prompt
    from nanovllm_tui.engine.serving.request_handle import RequestHandle


@runtime_checkable
class ChatBackend(Protocol):
    """Submit streamed requests and abort them; every method may be called from any thread."""

    def submit(
        self,
        prompt: Prompt,
        sampling_params: SamplingParams | None = None,
        request_id: str | None = None,
        *,
        enable_thinking: bool | None = None,
        split_reasoning: bool | None = None,
    ) -> RequestHandle:
        """Start a request; ValueError for bad input, RuntimeError once the backend has stopped."""
        ...

    def abort(self, request_id: str) -> bool:
        """Finish a live request with "abort"; False if it is not live."""
        ...

    @property
    def is_running(self) -> bool: ...

    @property
    def fatal_error(self) -> str | None: ...

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop; returns within about `timeout` seconds."""
        ...
