"""One chat session: its history, system prompt and sampling settings (no UI code)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nanovllm_tui.engine.sampling_params import SamplingParams
    from nanovllm_tui.engine.serving.request_handle import RequestHandle


@dataclass(slots=True)
class SessionSettings:
    """What the settings modal edits; turned into SamplingParams per request."""

    system_prompt: str = "You are a helpful assistant."
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = -1
    max_tokens: int = 256
    seed: int | None = None
    thinking: bool = True  # Qwen3's enable_thinking; ignored by models without it

    def sampling_params(self) -> SamplingParams:
        """SamplingParams for one request (raises ValueError on a bad value)."""
        from nanovllm_tui.engine.sampling_params import SamplingParams

        return SamplingParams(
            temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, max_tokens=self.max_tokens, seed=self.seed
        )

    def copy(self) -> SessionSettings:
        return replace(self)


@dataclass(slots=True)
class ChatSession:
    """A conversation: messages in chat-template form plus the request currently streaming, if any."""

    number: int
    settings: SessionSettings = field(default_factory=SessionSettings)
    messages: list[dict[str, str]] = field(default_factory=list)
    handle: RequestHandle | None = None  # the streaming request while an answer is being generated
    num_requests: int = 0

    @property
    def title(self) -> str:
        return f"Chat {self.number}"

    @property
    def busy(self) -> bool:
        return self.handle is not None

    def next_request_id(self) -> str:
        """Request ids start with the session number so the block map can colour blocks by session."""
        self.num_requests += 1
        return f"s{self.number}-{self.num_requests}"

    def prompt_messages(self) -> list[dict[str, str]]:
        """The history as sent to the engine: system prompt first (if any), then the turns."""
        system = [{"role": "system", "content": self.settings.system_prompt}] if self.settings.system_prompt else []
        return system + list(self.messages)


def session_of(request_id: str | None) -> int | None:
    """Session number from a request id "s<N>-<k>", None for other requests (e.g. the benchmark's)."""
    if not request_id or not request_id.startswith("s"):
        return None
    head = request_id[1:].split("-", 1)[0]
    return int(head) if head.isdigit() else None
