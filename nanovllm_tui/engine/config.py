"""Engine configuration: one dataclass, validated once, with derived fields filled in from the model dir."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any

POLICIES = ("mixed", "prefill_first")
# mixed_prefill_tokens of the streaming service, the app and `bench online`, where inter-token latency matters;
# the engine's own default (LLM.generate, offline) is no cap, where only throughput does. See RESULTS.md.
SERVING_MIXED_PREFILL_TOKENS = 384


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
        if not os.path.isdir(self.model):
            raise ValueError(
                f"model directory {self.model!r} does not exist; pass --model DIR with a "
                "Hugging Face model (config.json + *.safetensors)"
            )
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
        if self.num_kvcache_blocks is not None and self.num_kvcache_blocks < 1:
            raise ValueError(f"num_kvcache_blocks={self.num_kvcache_blocks} must be >= 1")
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
        return cls(model=str(model), **kwargs)
