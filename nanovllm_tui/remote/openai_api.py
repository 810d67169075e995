"""The OpenAI-API side of a request: a Service-style submit turned into a request body, and one streamed
chunk turned back into text, reasoning, finish reason and usage. Pure functions, no I/O.

Chat histories go to /v1/chat/completions; a prompt string or token ids to /v1/completions. top_k, ignore_eos,
stop_token_ids and chat_template_kwargs are vLLM's extensions to the API: they are sent only when they differ
from the defaults, so a plain OpenAI-compatible server still accepts requests that don't use them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nanovllm_tui.engine.sampling_params import SamplingParams

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
FINISH_REASONS = ("stop", "length", "abort")  # ours; any other ("tool_calls", "content_filter") counts as stop


@dataclass(frozen=True, slots=True)
class ChunkDelta:
    """What one streamed chunk adds."""

    text: str = ""
    reasoning: str = ""
    finish_reason: str | None = None
    prompt_tokens: int | None = None  # from the usage chunk (stream_options.include_usage)
    cached_tokens: int | None = None
    completion_tokens: int | None = None


def request_body(
    prompt: str | list[int] | Sequence[Mapping[str, Any]],
    sp: SamplingParams,
    model: str,
    enable_thinking: bool | None,
) -> tuple[str, dict[str, Any]]:
    """(path, JSON body) of a streamed request; ValueError naming the problem for a prompt of the wrong type."""
    body: dict[str, Any] = {"model": model}
    if isinstance(prompt, str) or (isinstance(prompt, list) and all(isinstance(t, int) for t in prompt)):
        if not prompt:
            raise ValueError("the prompt is empty; send at least one character or token")
        path, body["prompt"] = COMPLETIONS_PATH, prompt
    elif isinstance(prompt, Sequence) and (messages := [m for m in prompt if isinstance(m, Mapping)]):
        if len(messages) != len(prompt) or not all(isinstance(m.get("role"), str) and "content" in m for m in messages):
            raise ValueError("chat messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
        path, body["messages"] = CHAT_PATH, [dict(m) for m in messages]
        if enable_thinking is not None:
            body["chat_template_kwargs"] = {"enable_thinking": enable_thinking}
    else:
        raise ValueError("the prompt must be a string, a list of token ids or a list of chat messages")
    body.update(max_tokens=sp.max_tokens, temperature=sp.temperature, top_p=sp.top_p)
    body["stream_options"] = {"include_usage": True}
    if sp.seed is not None:
        body["seed"] = sp.seed
    if sp.stop:
        body["stop"] = list(sp.stop)
    if sp.top_k != -1:
        body["top_k"] = sp.top_k
    if sp.ignore_eos:
        body["ignore_eos"] = True
    if sp.stop_token_ids:
        body["stop_token_ids"] = list(sp.stop_token_ids)
    return path, body


def read_chunk(event: Mapping[str, Any]) -> ChunkDelta:
    """The delta of one chat.completion.chunk or text_completion event (vLLM, OpenAI and look-alikes)."""
    text, reasoning, finish = "", "", None
    choices = event.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], Mapping):
        choice = choices[0]
        delta = choice.get("delta")
        if isinstance(delta, Mapping):  # chat: content, and reasoning under vLLM's old or new key
            text = _str(delta.get("content"))
            reasoning = _str(delta.get("reasoning_content")) or _str(delta.get("reasoning"))
        else:  # completions
            text = _str(choice.get("text"))
        reason = choice.get("finish_reason")
        if isinstance(reason, str) and reason:
            finish = reason if reason in FINISH_REASONS else "stop"
    usage = event.get("usage")
    if not isinstance(usage, Mapping):
        return ChunkDelta(text, reasoning, finish)
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, Mapping) else None
    return ChunkDelta(
        text, reasoning, finish, _int(usage.get("prompt_tokens")), _int(cached), _int(usage.get("completion_tokens"))
    )


def _str(v: object) -> str:
    return v if isinstance(v, str) else ""


def _int(v: object) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None
