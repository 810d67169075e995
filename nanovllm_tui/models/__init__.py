"""Model registry: config.json's `architectures` picks the class."""

from __future__ import annotations

from typing import Any

from nanovllm_tui.models.llama import LlamaForCausalLM
from nanovllm_tui.models.qwen3 import Qwen3ForCausalLM

MODEL_REGISTRY: dict[str, type[LlamaForCausalLM]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "Qwen3ForCausalLM": Qwen3ForCausalLM,
}


def get_model_class(hf_config: Any) -> type[LlamaForCausalLM]:
    """The model class for config.json's `architectures`; ValueError naming the supported ones."""
    archs = list(getattr(hf_config, "architectures", None) or [])
    for arch in archs:
        if arch in MODEL_REGISTRY:
            return MODEL_REGISTRY[arch]
    raise ValueError(
        f"unsupported architecture {archs or 'missing'} in config.json; supported: {', '.join(MODEL_REGISTRY)}"
    )
