"""SamplingParams: how one request samples and when it stops; validated on construction."""

from __future__ import annotations

import math
from dataclasses import dataclass

MAX_STOP_CHARS = 1024


@dataclass(slots=True)
class SamplingParams:
    """temperature=0 means greedy; top_k=-1 and top_p=1 disable those filters."""

    temperature: float = 1.0
    top_k: int = -1
    top_p: float = 1.0
    max_tokens: int = 64
    ignore_eos: bool = False
    stop: list[str] | str | None = None
    stop_token_ids: list[int] | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        t = self.temperature
        if not isinstance(t, (int, float)) or math.isnan(t) or t < 0 or math.isinf(t):
            raise ValueError(f"temperature={t!r} must be a finite number >= 0 (0 = greedy)")
        if not isinstance(self.top_k, int) or (self.top_k != -1 and self.top_k < 1):
            raise ValueError(f"top_k={self.top_k!r} must be -1 (off) or an integer >= 1")
        p = self.top_p
        if not isinstance(p, (int, float)) or math.isnan(p) or not 0.0 < p <= 1.0:
            raise ValueError(f"top_p={p!r} must be in (0, 1]")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens={self.max_tokens!r} must be an integer >= 1")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if self.stop is not None:
            if not all(isinstance(s, str) for s in self.stop):
                raise ValueError("stop must be a string or a list of strings")
            self.stop = [s for s in self.stop if s]
            longest = max((len(s) for s in self.stop), default=0)
            if longest > MAX_STOP_CHARS:  # detokenizing rescans this much text per token
                raise ValueError(
                    f"a stop string has {longest} characters; stop strings may have at most {MAX_STOP_CHARS}"
                )
        if self.stop_token_ids is not None and not all(isinstance(i, int) and i >= 0 for i in self.stop_token_ids):
            raise ValueError(f"stop_token_ids={self.stop_token_ids!r} must be non-negative integers")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            raise ValueError(f"seed={self.seed!r} must be an integer or None")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1
