"""What a streaming service does outside its step loop: build its engine, describe it (EngineInfo), and turn a
request (a prompt string, token ids or chat messages) into validated token ids in the caller's thread
(RequestChecker, which needs only the config and the tokenizer, so the process service holds no engine).
Shared by EngineService (thread_service.py) and ProcessEngineService (process_service.py)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any, cast

from nanovllm_tui.engine.config import Config, with_serving_defaults
from nanovllm_tui.engine.llm import LLM
from nanovllm_tui.engine.llm_engine import LLMEngine
from nanovllm_tui.engine.request_check import check_request, tokenize_prompt
from nanovllm_tui.engine.sampling_params import SamplingParams
from nanovllm_tui.engine.serving.protocol import EngineInfo, Prompt
from nanovllm_tui.engine.text.chat import is_messages, prompt_opens_reasoning, render_chat, template_has_reasoning
from nanovllm_tui.engine.text.reasoning import ReasoningSplitter


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


def engine_info_of(llm: LLMEngine) -> EngineInfo:
    """The EngineInfo of a built engine (its runner resolved device, dtype and attention backend)."""
    cfg, runner = llm.config, llm.model_runner
    return EngineInfo(
        model=cfg.model,
        device=str(runner.device),
        dtype=str(runner.dtype).removeprefix("torch."),
        block_size=cfg.kvcache_block_size,
        num_blocks=llm.block_manager.num_blocks,
        tensor_parallel_size=cfg.tensor_parallel_size,
        max_model_len=cfg.max_model_len,
        prefix_caching=cfg.enable_prefix_caching,
        attention_backend=runner.backend.name,
        scheduling_policy=cfg.scheduling_policy,
        max_num_seqs=cfg.max_num_seqs,
        max_num_batched_tokens=cfg.max_num_batched_tokens,
        mixed_prefill_tokens=cfg.mixed_prefill_tokens,
        vocab_size=cfg.hf_config.vocab_size,
        has_reasoning_template=template_has_reasoning(llm.tokenizer),
    )


class RequestChecker:
    """Validates and tokenizes requests in the caller's thread with the engine's config and tokenizer only."""

    def __init__(self, config: Config, tokenizer: Any):
        self.config = config
        self.tokenizer = tokenizer
        self.reasoning_template = template_has_reasoning(tokenizer)

    def tokenize(self, text: str) -> list[int]:
        """The model's token ids of `text` (no special tokens added); ValueError if it can't be tokenized."""
        if not isinstance(text, str):
            raise ValueError(f"tokenize takes a string, got {type(text).__name__}; pass the text to tokenize")
        return tokenize_prompt(text, self.config, self.tokenizer)

    def prepare(
        self, prompt: Prompt, sp: SamplingParams, enable_thinking: bool | None, split_reasoning: bool | None
    ) -> tuple[list[int], ReasoningSplitter | None]:
        """Validate a request: the token ids to queue and its reasoning splitter (or None); ValueError if bad."""
        chat = is_messages(prompt)
        messages = cast("Sequence[Mapping[str, Any]]", prompt)
        text_or_ids = render_chat(self.tokenizer, messages, enable_thinking) if chat else prompt
        if not chat and not isinstance(text_or_ids, (str, list)):
            raise ValueError(
                f"prompt must be a string, a list of token ids or a list of chat messages, got {type(prompt).__name__}"
            )
        ids = check_request(text_or_ids, sp, self.config, self.tokenizer)
        if split_reasoning is None:
            split_reasoning = chat and self.reasoning_template
        if not split_reasoning:
            return ids, None
        opens = isinstance(text_or_ids, str) and prompt_opens_reasoning(text_or_ids)
        return ids, ReasoningSplitter(in_reasoning=opens)
