"""What the history keeps: a session (title, times, model, settings) and its messages (text, reasoning, outcome,
token counts and timings). Plain dataclasses; the store maps them to rows, the exporters to files."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from nanovllm_tui.app.session import SessionSettings
from nanovllm_tui.app.text import inert

COMPLETE, STOPPED, FAILED = "complete", "stopped", "failed"
TITLE_CHARS = 60


def status_of(finish_reason: str | None) -> str:
    """A message's status from its finish reason: an aborted answer was stopped, an error failed it."""
    return {"abort": STOPPED, "error": FAILED}.get(finish_reason or "", COMPLETE)


def title_from(question: str) -> str:
    """A session's title: the first line of its first question, shortened."""
    line = inert(next((ln.strip() for ln in question.splitlines() if ln.strip()), ""))
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1].rstrip() + "…"


def settings_to_json(settings: SessionSettings) -> str:
    """Sampling settings and the thinking toggle as JSON (the system prompt has its own column)."""
    data = asdict(settings)
    data.pop("system_prompt", None)
    return json.dumps(data, sort_keys=True)


def _coerce(default: Any, value: Any) -> Any:
    """`value` as the type of the field whose default is `default`, or None when it does not fit."""
    if isinstance(default, bool):
        return value if isinstance(value, bool) else None
    if isinstance(default, str):
        return value if isinstance(value, str) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(default, float):
        return float(value)
    return int(value) if float(value).is_integer() else None  # int fields, and optional ints such as seed


def settings_from(system_prompt: str, raw: str) -> SessionSettings:
    """SessionSettings from the stored columns; unknown or ill-typed keys (another version's) are ignored."""
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    data = data if isinstance(data, dict) else {}
    defaults = SessionSettings()
    kwargs: dict[str, Any] = {"system_prompt": system_prompt}
    for f in fields(SessionSettings):
        if f.name != "system_prompt" and data.get(f.name) is not None:
            value = _coerce(getattr(defaults, f.name), data[f.name])
            if value is not None:
                kwargs[f.name] = value
    return SessionSettings(**kwargs)


@dataclass(slots=True)
class MessageRecord:
    """One turn. Answers carry their outcome and timings; a stopped or failed answer keeps its partial text."""

    role: str
    content: str
    reasoning: str = ""
    status: str = COMPLETE
    finish_reason: str | None = None
    error: str | None = None
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    completion_tokens: int | None = None
    ttft: float | None = None
    tok_s: float | None = None
    seq: int = 0
    created_at: float = 0.0

    @property
    def in_context(self) -> bool:
        """Whether the turn belongs in the prompt: an answer that failed before any text does not."""
        return not (self.status == FAILED and not self.content)


@dataclass(slots=True)
class SessionRecord:
    """A saved chat. `id` is the number the CLI and the sessions screen show; `uid` names it across instances."""

    uid: str
    title: str
    created_at: float
    updated_at: float
    model: str = ""
    settings: SessionSettings = field(default_factory=SessionSettings)
    id: int | None = None
    is_open: bool = False
    num_messages: int = 0
    messages: list[MessageRecord] = field(default_factory=list)

    def chat_messages(self) -> list[dict[str, str]]:
        """The turns in chat-template form (what the app keeps in ChatSession.messages)."""
        return [{"role": m.role, "content": m.content} for m in self.messages if m.in_context]
