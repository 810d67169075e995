"""Request checks: a prompt becomes validated token ids, sampling parameters are bounded by the model, request
ids are unique among live requests, and a failed step's requests are re-checked to find the one to blame.

Reads only a Config and a tokenizer (no engine state), so the engine, any caller thread and the process
service's proxy (which holds just those two) run the same checks.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Collection
from typing import Any

from nanovllm_tui.engine.config import Config
from nanovllm_tui.engine.sampling_params import SamplingParams
from nanovllm_tui.engine.scheduling.sequence import Sequence
from nanovllm_tui.engine.text.chat import ChatPrompt, tokenize_chat
from nanovllm_tui.engine.text.prompt_check import check_prompt_text


def tokenize_prompt(prompt: Any, config: Config, tokenizer: Any) -> list[int]:
    """Token ids of a text prompt, or a copy of given ids as plain ints; ValueError if the text can't be
    tokenized or the prompt is neither. Special-token strings in a raw text prompt are control tokens (the
    caller wrote the whole prompt); in a rendered chat (ChatPrompt) only the template's own are."""
    if isinstance(prompt, str):
        if not prompt:
            return []
        check_prompt_text(prompt, config.max_model_len, tokenizer)
        try:
            if isinstance(prompt, ChatPrompt):
                return tokenize_chat(tokenizer, prompt)
            return tokenizer.encode(prompt, add_special_tokens=False)
        except Exception as exc:  # a tokenizer failure is this request's problem, not the engine's
            raise ValueError(
                f"cannot tokenize the prompt ({type(exc).__name__}: {exc}); send plain text or token ids"
            ) from exc
    if not isinstance(prompt, (list, tuple)):
        raise ValueError(f"prompt must be a string or a list of token ids, got {type(prompt).__name__}")
    vocab = config.hf_config.vocab_size
    if not all(isinstance(t, numbers.Integral) and not isinstance(t, bool) and 0 <= int(t) < vocab for t in prompt):
        raise ValueError(f"prompt token ids must be integers in [0, {vocab}); got one outside it")
    return [int(t) for t in prompt]


def check_params_for_model(sp: Any, config: Config) -> SamplingParams:
    """The request's SamplingParams (a default one for None), checked against the model's vocabulary."""
    if sp is None:
        return SamplingParams()
    if not isinstance(sp, SamplingParams):
        raise ValueError(f"sampling_params must be a SamplingParams or None, got {type(sp).__name__}")
    vocab = config.hf_config.vocab_size
    if sp.top_k > vocab:
        raise ValueError(f"top_k={sp.top_k} exceeds the vocabulary ({vocab} tokens); use -1 (off) or at most {vocab}")
    if sp.stop_token_ids and max(sp.stop_token_ids) >= vocab:
        raise ValueError(f"stop_token_ids must be token ids in [0, {vocab}); got {max(sp.stop_token_ids)}")
    return sp


def check_request(prompt: Any, sp: Any, config: Config, tokenizer: Any) -> list[int]:
    """Tokenize and check one request: its validated prompt token ids."""
    sp = check_params_for_model(sp, config)
    ids = tokenize_prompt(prompt, config, tokenizer)
    if not ids:
        raise ValueError("prompt is empty; send at least one token")
    limit = config.max_model_len
    if len(ids) + sp.max_tokens > limit:
        raise ValueError(
            f"prompt ({len(ids)} tokens) + max_tokens ({sp.max_tokens}) = {len(ids) + sp.max_tokens} "
            f"exceeds max_model_len={limit}; shorten the prompt, lower max_tokens or raise max_model_len"
        )
    return ids


def check_request_id(request_id: Any, live: Collection[str]) -> None:
    """An explicit request id must be a non-empty string that no live request holds."""
    if not isinstance(request_id, str) or not request_id:
        raise ValueError(f"request_id must be a non-empty string or None, got {request_id!r}")
    if request_id in live:
        raise ValueError(f"request_id {request_id!r} is already in use by a live request; pass a unique id or None")


def request_problem(seq: Sequence, config: Config) -> str | None:
    """Why this request's own data could make a step fail (its parameters or tokens are out of bounds), or None.

    Run over a failed step's requests: SamplingParams are immutable once validated, so a hit here means its
    data got past validation some other way, and that request alone is to blame."""
    sp = seq.sampling_params
    try:
        if not isinstance(sp, SamplingParams):
            raise ValueError(f"sampling_params is a {type(sp).__name__}, not a SamplingParams")
        check_params_for_model(dataclasses.replace(sp), config)  # replace() runs the field checks again
    except ValueError as exc:
        return str(exc)
    vocab = config.hf_config.vocab_size
    if not all(type(t) is int and 0 <= t < vocab for t in seq.token_ids):
        return f"its token ids are not all integers in [0, {vocab})"
    return None
