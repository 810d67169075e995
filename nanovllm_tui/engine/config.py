"""Engine configuration: one dataclass, validated once, with derived fields filled in from the model dir."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any

from nanovllm_tui.engine.model_dir import check_model_dir

POLICIES = ("mixed", "prefill_first")
# mixed_prefill_tokens of the streaming service, the app and `bench online`, where inter-token latency matters;
# the engine's own default (LLM.generate, offline) is no cap, where only throughput does. See RESULTS.md.
SERVING_MIXED_PREFILL_TOKENS = 384


# Option types, checked before any value is used (a bool is not a number here; None where the field allows it).
INT_OPTIONS = (
    "max_num_seqs",
    "max_num_batched_tokens",
    "max_model_len",
    "kvcache_block_size",
    "tensor_parallel_size",
    "mixed_prefill_tokens",
)
OPTIONAL_INT_OPTIONS = ("num_kvcache_blocks", "kv_cache_memory")
BOOL_OPTIONS = ("enable_prefix_caching", "enforce_eager", "compile_small_ops")
STR_OPTIONS = ("device", "scheduling_policy", "attention_backend")


def _check_option_types(config: Config) -> None:
    """TypeError naming the option, for a value of the wrong type (before comparisons would raise their own)."""

    def wrong(name: str, allowed: str) -> TypeError:
        value = getattr(config, name)
        return TypeError(f"{name}={value!r} must be {allowed}, got {type(value).__name__}")

    for name in INT_OPTIONS + OPTIONAL_INT_OPTIONS:
        value = getattr(config, name)
        if (value is not None or name in INT_OPTIONS) and (isinstance(value, bool) or not isinstance(value, int)):
            raise wrong(name, "an integer" if name in INT_OPTIONS else "an integer or None")
    for name in BOOL_OPTIONS:
        if not isinstance(getattr(config, name), bool):
            raise wrong(name, "True or False")
    if config.async_scheduling is not None and not isinstance(config.async_scheduling, bool):
        raise wrong("async_scheduling", "True, False or None")
    for name in STR_OPTIONS:
        if not isinstance(getattr(config, name), str):
            raise wrong(name, "a string")
    if config.dtype is not None and not isinstance(config.dtype, str):
        raise wrong("dtype", "a string (float32, bfloat16, float16) or None")
    util = config.gpu_memory_utilization
    if isinstance(util, bool) or not isinstance(util, (int, float)):
        raise wrong("gpu_memory_utilization", "a number in (0, 1]")


def with_serving_defaults(engine_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Engine options for a streaming service: the caller's, over the serving defaults."""
    return {"mixed_prefill_tokens": SERVING_MIXED_PREFILL_TOKENS, **engine_kwargs}


@dataclass(slots=True)
class Config:
    """Everything the engine needs to know before it allocates anything."""

    model: str
    device: str = "auto"
    dtype: str | None = None
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    max_model_len: int = 4096
    kvcache_block_size: int = 256
    num_kvcache_blocks: int | None = None
    kv_cache_memory: int | None = None
    gpu_memory_utilization: float = 0.9
    enable_prefix_caching: bool = True
    scheduling_policy: str = "mixed"
    # mixed policy: prompt tokens in a step that also carries decodes. A prompt chunk lengthens that step for
    # every running request, so this bounds the inter-token-latency spike a new prompt causes. 0 = no cap
    # beyond max_num_batched_tokens (offline default; serving uses SERVING_MIXED_PREFILL_TOKENS).
    mixed_prefill_tokens: int = 0
    enforce_eager: bool = False
    compile_small_ops: bool = True  # torch.compile RMSNorm / SiLU-and-mul / rotary on CUDA (CPU stays eager)
    # Pipelined decoding: launch the next decode step before the current one's tokens are back. None = on
    # for CUDA (the host's work then hides behind the GPU's), off on CPU (where a forward is synchronous).
    async_scheduling: bool | None = None
    tensor_parallel_size: int = 1
    attention_backend: str = "auto"
    hf_config: Any = field(default=None, repr=False)
    eos_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.model, str):
            raise TypeError(f"model must be a path to a model directory (str), got {type(self.model).__name__}")
        self.model = check_model_dir(self.model)  # ~ expanded; missing, unreadable or non-regular files named
        _check_option_types(self)
        bs = self.kvcache_block_size
        if bs < 16 or bs & (bs - 1):
            raise ValueError(f"kvcache_block_size={bs} must be a power of two >= 16 (e.g. 16, 256)")
        for name in ("max_num_seqs", "max_num_batched_tokens", "max_model_len", "tensor_parallel_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.mixed_prefill_tokens < 0:
            raise ValueError(f"mixed_prefill_tokens={self.mixed_prefill_tokens} must be >= 0 (0 = no cap)")
        if self.scheduling_policy not in POLICIES:
            raise ValueError(f"scheduling_policy={self.scheduling_policy!r}; choose one of {', '.join(POLICIES)}")
        for name in OPTIONAL_INT_OPTIONS:
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1 (or None)")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization={self.gpu_memory_utilization} must be in (0, 1]")

    @classmethod
    def from_kwargs(cls, model: str, **kwargs: Any) -> Config:
        """Build a Config, rejecting unknown keyword arguments by name."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(
                f"unknown engine option(s): {', '.join(unknown)}; valid: {', '.join(sorted(names - {'hf_config', 'eos_token_ids', 'model'}))}"
            )
        if not isinstance(model, (str, os.PathLike)):
            raise TypeError(f"model must be a path to a model directory, got {type(model).__name__}")
        return cls(model=os.fspath(model), **kwargs)
