"""The inference engine: `from engine import LLM, SamplingParams`."""
from engine.llm import LLM
from engine.sampling_params import SamplingParams
from engine.stats import EngineStats, StepStats

__all__ = ["LLM", "SamplingParams", "EngineStats", "StepStats"]
