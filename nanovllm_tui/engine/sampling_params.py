"""SamplingParams: how one request samples and when it stops; validated on construction, immutable after.

Every field is bounded to what the kernels take (int64 / int32 buffers, float32 temperatures), so a request
that passes here cannot overflow a step and fail the requests batched with it. Bounds that depend on the
model (top_k and stop_token_ids against the vocabulary) are checked by the engine at add_request.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

MAX_STOP_CHARS = 1024
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
SEED_RANGE = (-(2**63), 2**64 - 1)  # torch.Generator.manual_seed's range: a seed is any 64-bit pattern
FLOAT32_MAX = 3.4028234663852886e38  # temperatures and top_p travel as float32
# Below this a temperature is greedy (vLLM's _SAMPLING_EPS): logits / T overflows float32 long before T
# reaches 0. The samplers (kernels/sample_ref.py: MIN_TEMPERATURE) use the same threshold.
MIN_TEMPERATURE = 1e-5


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """temperature=0 means greedy (so does any temperature below MIN_TEMPERATURE, stored as 0); top_k=-1 and
    top_p=1 disable those filters."""

    temperature: float = 1.0
    top_k: int = -1
    top_p: float = 1.0
    max_tokens: int = 64
    ignore_eos: bool = False
    stop: list[str] | str | None = None
    stop_token_ids: list[int] | None = None
    seed: int | None = None
    # vLLM's meanings: repetition divides positive / multiplies negative logits of every token seen (prompt
    # and output); presence and frequency subtract from output tokens' logits; min_p drops tokens whose
    # probability is below min_p times the most likely token's.
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    min_p: float = 0.0

    def __post_init__(self) -> None:
        # Frozen: the normalised values are set through object.__setattr__, once, here.
        set_ = object.__setattr__
        t = _real("temperature", self.temperature, "a finite number >= 0 (0 = greedy)")
        if not 0.0 <= t <= FLOAT32_MAX:
            raise ValueError(f"temperature={self.temperature!r} must be a finite number >= 0 (0 = greedy)")
        set_(self, "temperature", t if t >= MIN_TEMPERATURE else 0.0)
        top_k = _integer("top_k", self.top_k, "-1 (off) or an integer >= 1")
        if top_k != -1 and not 1 <= top_k <= INT32_MAX:
            raise ValueError(f"top_k={self.top_k!r} must be -1 (off) or an integer in [1, {INT32_MAX}]")
        set_(self, "top_k", top_k)
        p = _real("top_p", self.top_p, "a number in (0, 1]")
        if not 0.0 < p <= 1.0:
            raise ValueError(f"top_p={self.top_p!r} must be in (0, 1]")
        set_(self, "top_p", p)
        n = _integer("max_tokens", self.max_tokens, "an integer >= 1")
        if not 1 <= n <= INT64_MAX:
            raise ValueError(f"max_tokens={self.max_tokens!r} must be an integer in [1, {INT64_MAX}]")
        set_(self, "max_tokens", n)
        if not isinstance(self.ignore_eos, bool):
            raise ValueError(f"ignore_eos={self.ignore_eos!r} must be True or False")
        set_(self, "stop", _stop_strings(self.stop))
        set_(self, "stop_token_ids", _stop_token_ids(self.stop_token_ids))
        if self.seed is not None:
            seed = _integer("seed", self.seed, "an integer or None")
            if not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
                raise ValueError(f"seed={self.seed!r} must be a 64-bit integer in [-2**63, 2**64 - 1] or None")
            set_(self, "seed", seed)
        _penalties(self)

    @property
    def penalized(self) -> bool:
        """Whether any penalty or min_p is on (the batch then samples on the torch path)."""
        return (
            self.repetition_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
            or self.min_p > 0.0
        )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    @property
    def stop_strings(self) -> list[str]:
        """The stop strings as validated (a list, empty for none)."""
        return self.stop if isinstance(self.stop, list) else []


def _penalties(sp: SamplingParams) -> None:
    """Validate and normalise the penalties and min_p (ValueError naming the field and its range)."""
    set_ = object.__setattr__
    r = _real("repetition_penalty", sp.repetition_penalty, "a number > 0 (1 = off)")
    if not 0.0 < r <= FLOAT32_MAX:
        raise ValueError(f"repetition_penalty={sp.repetition_penalty!r} must be a number > 0 (1 = off)")
    set_(sp, "repetition_penalty", r)
    for name in ("presence_penalty", "frequency_penalty"):
        v = _real(name, getattr(sp, name), "a number in [-2, 2] (0 = off)")
        if not -2.0 <= v <= 2.0:
            raise ValueError(f"{name}={getattr(sp, name)!r} must be in [-2, 2] (0 = off)")
        set_(sp, name, v)
    m = _real("min_p", sp.min_p, "a number in [0, 1] (0 = off)")
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"min_p={sp.min_p!r} must be in [0, 1] (0 = off)")
    set_(sp, "min_p", m)


def _real(name: str, value: Any, allowed: str) -> float:
    """A real number (not a bool) as a float; ValueError naming the field otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}={value!r} must be {allowed}, got {type(value).__name__}")
    try:
        out = float(value)
    except OverflowError:
        raise ValueError(f"{name}={value!r} is too large; it must be {allowed}") from None
    if math.isnan(out) or math.isinf(out):
        raise ValueError(f"{name}={value!r} must be {allowed}")
    return out


def _integer(name: str, value: Any, allowed: str) -> int:
    """An integer (not a bool, not a float) as an int; ValueError naming the field otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name}={value!r} must be {allowed}, got {type(value).__name__}")
    return int(value)


def _stop_strings(stop: Any) -> list[str] | None:
    if stop is None:
        return None
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop):
        raise ValueError(f"stop must be a string or a list of strings, got {type(stop).__name__}")
    longest = max((len(s) for s in stop), default=0)
    if longest > MAX_STOP_CHARS:  # detokenizing rescans this much text per token
        raise ValueError(f"a stop string has {longest} characters; stop strings may have at most {MAX_STOP_CHARS}")
    return [s for s in stop if s]


def _stop_token_ids(ids: Any) -> list[int] | None:
    if ids is None:
        return None
    if not isinstance(ids, (list, tuple)) or not all(
        isinstance(i, numbers.Integral) and not isinstance(i, bool) and 0 <= int(i) <= INT64_MAX for i in ids
    ):
        raise ValueError(f"stop_token_ids={ids!r} must be a list of non-negative integer token ids")
    return [int(i) for i in ids]
