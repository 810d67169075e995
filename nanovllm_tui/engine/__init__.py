"""The inference engine: `from nanovllm_tui.engine import LLM, SamplingParams` (also importable from `nanovllm_tui`).

Lazy like the top-level package: importing a submodule that needs no torch (the Service protocol, the request
handle, stats) does not import torch through this __init__.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_PUBLIC = {
    "LLM": "nanovllm_tui.engine.llm",
    "SamplingParams": "nanovllm_tui.engine.sampling_params",
    "EngineStats": "nanovllm_tui.engine.stats",
    "StepStats": "nanovllm_tui.engine.stats",
}

__all__ = ["LLM", "EngineStats", "SamplingParams", "StepStats"]

if TYPE_CHECKING:
    from nanovllm_tui.engine.llm import LLM
    from nanovllm_tui.engine.sampling_params import SamplingParams
    from nanovllm_tui.engine.stats import EngineStats, StepStats


def __getattr__(name: str) -> Any:
    """Load a public name from its module on first access (module-level, PEP 562)."""
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'nanovllm_tui.engine' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
