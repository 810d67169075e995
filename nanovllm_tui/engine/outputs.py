"""RequestOutput: what one step tells a caller about one request (all fields are deltas)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class RequestOutput:
    request_id: str
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    reasoning: str = ""
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error"
    error: str | None = None
