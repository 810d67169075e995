"""What a streaming service does outside its step loop: build its engine, and turn a request (a prompt string,
token ids or chat messages) into validated token ids in the caller's thread. Shared by EngineService
(nanovllm_tui/engine/serving/thread_service.py) and ProcessEngineService (nanovllm_tui/engine/serving/process_service.py)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

from nanovllm_tui.engine.config import Config, with_serving_defaults
from nanovllm_tui.engine.llm import LLM
from nanovllm_tui.engine.llm_engine import LLMEngine
from nanovllm_tui.engine.sampling_params import SamplingParams
from nanovllm_tui.engine.text.chat import is_messages, prompt_opens_reasoning, render_chat
from nanovllm_tui.engine.text.reasoning import ReasoningSplitter

Prompt = str | list[int] | Sequence[Mapping[str, Any]]


def make_engine(llm_or_config: LLMEngine | Config | str | os.PathLike, engine_kwargs: dict[str, Any]) -> LLMEngine:
    """The service's engine: the one given, one built from a Config, or one built from a model dir with the
    serving defaults (engine.config.with_serving_defaults) under the caller's options."""
    if isinstance(llm_or_config, LLMEngine):
        if engine_kwargs:
            raise TypeError("engine options go to LLM(...); pass either an engine or a model path with options")
        return llm_or_config
    if isinstance(llm_or_config, Config):
        skip = {"model", "hf_config", "eos_token_ids"}
        kwargs = {f.name: getattr(llm_or_config, f.name) for f in dataclasses.fields(Config) if f.name not in skip}
        return LLM(llm_or_config.model, **{**kwargs, **engine_kwargs})
    if isinstance(llm_or_config, (str, os.PathLike)):
        return LLM(os.fspath(llm_or_config), **with_serving_defaults(engine_kwargs))
    raise TypeError(
        f"EngineService needs an LLM/LLMEngine, a Config or a model directory, got {type(llm_or_config).__name__}"
    )


def prepare_request(
    engine: Any,
    prompt: Prompt,
    sp: SamplingParams,
    enable_thinking: bool | None,
    split_reasoning: bool | None,
    reasoning_template: bool,
) -> tuple[list[int], ReasoningSplitter | None]:
    """Validate a request in the caller's thread: the token ids to queue and its reasoning splitter (or None).

    Reads only engine.tokenizer and engine.config, so any thread (or a process holding just those) may call it."""
    chat = is_messages(prompt)
    text_or_ids = render_chat(engine.tokenizer, prompt, enable_thinking) if chat else prompt
    if not chat and not isinstance(text_or_ids, (str, list)):
        raise ValueError(
            f"prompt must be a string, a list of token ids or a list of chat messages, got {type(prompt).__name__}"
        )
    ids = engine.validate_request(text_or_ids, sp)
    if split_reasoning is None:
        split_reasoning = chat and reasoning_template
    if not split_reasoning:
        return ids, None
    opens = isinstance(text_or_ids, str) and prompt_opens_reasoning(text_or_ids)
    return ids, ReasoningSplitter(in_reasoning=opens)
