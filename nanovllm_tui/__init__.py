"""nanovllm-tui: a small LLM inference engine and a Textual app over it.

`from nanovllm_tui import LLM, SamplingParams`. Importing the package imports no torch: each public name is
loaded from its module on first use (PEP 562), so `nanovllm-tui --help` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the module that defines it.
_PUBLIC = {
    "LLM": "nanovllm_tui.engine.llm",
    "SamplingParams": "nanovllm_tui.engine.sampling_params",
    "EngineStats": "nanovllm_tui.engine.stats",
    "StepStats": "nanovllm_tui.engine.stats",
    "RequestOutput": "nanovllm_tui.engine.outputs",
    "Service": "nanovllm_tui.engine.serving.protocol",
    "EngineService": "nanovllm_tui.engine.serving.thread_service",
    "ProcessEngineService": "nanovllm_tui.engine.serving.process_service",
    "RequestHandle": "nanovllm_tui.engine.serving.request_handle",
}

__all__ = [
    "LLM",
    "EngineService",
    "EngineStats",
    "ProcessEngineService",
    "RequestHandle",
    "RequestOutput",
    "SamplingParams",
    "Service",
    "StepStats",
    "__version__",
]

if TYPE_CHECKING:
    from nanovllm_tui.engine.llm import LLM
    from nanovllm_tui.engine.outputs import RequestOutput
    from nanovllm_tui.engine.sampling_params import SamplingParams
    from nanovllm_tui.engine.serving.process_service import ProcessEngineService
    from nanovllm_tui.engine.serving.protocol import Service
    from nanovllm_tui.engine.serving.request_handle import RequestHandle
    from nanovllm_tui.engine.serving.thread_service import EngineService
    from nanovllm_tui.engine.stats import EngineStats, StepStats


def __getattr__(name: str) -> Any:
    """Load a public name from its module on first access (module-level, PEP 562)."""
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'nanovllm_tui' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
