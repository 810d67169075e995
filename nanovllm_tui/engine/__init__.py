"""The inference engine: `from nanovllm_tui.engine import LLM, SamplingParams` (also importable from `nanovllm_tui`)."""

from nanovllm_tui.engine.llm import LLM
from nanovllm_tui.engine.sampling_params import SamplingParams
from nanovllm_tui.engine.stats import EngineStats, StepStats

__all__ = ["LLM", "EngineStats", "SamplingParams", "StepStats"]
