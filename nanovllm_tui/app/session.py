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
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    min_p: float = 0.0
    max_tokens: int = 256
    seed: int | None = None
    thinking: bool = True  # Qwen3's enable_thinking; ignored by models without it

    def sampling_params(self) -> SamplingParams:
        """SamplingParams for one request (raises ValueError on a bad value)."""
        from nanovllm_tui.engine.sampling_params import SamplingParams

        return SamplingParams(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            max_tokens=self.max_tokens,
            seed=self.seed,
            repetition_penalty=self.repetition_penalty,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            min_p=self.min_p,
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


# What made the demo model (SmolLM2-135M-Instruct, no sampling keys in its generation_config.json) answer
# "What is the capital of France?" sensibly: 0.7 / 0.95 wandered into French nonsense, greedy looped.
FALLBACK_SAMPLING = {"temperature": 0.3, "top_p": 0.9, "repetition_penalty": 1.1}
_GENERATION_KEYS = {"temperature": float, "top_p": float, "top_k": int, "repetition_penalty": float, "min_p": float}


def settings_for_model(model_dir: str | None) -> SessionSettings:
    """Default session settings: the model's generation_config.json sampling values, else FALLBACK_SAMPLING."""
    import json
    import pathlib

    found: dict[str, float | int] = {}
    path = pathlib.Path(model_dir).expanduser() / "generation_config.json" if model_dir else None
    try:
        data = json.loads(path.read_text()) if path is not None and path.is_file() else {}
    except (OSError, ValueError):
        data = {}
    for key, kind in _GENERATION_KEYS.items():
        value = data.get(key) if isinstance(data, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            found[key] = kind(value)
    settings = SessionSettings(**(found or FALLBACK_SAMPLING))
    try:
        settings.sampling_params()
    except ValueError:  # a generation_config value our engine refuses: the fallback is known good
        settings = SessionSettings(**FALLBACK_SAMPLING)  # type: ignore[arg-type]
    return settings
