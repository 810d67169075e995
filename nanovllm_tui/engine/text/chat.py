"""Chat-template rendering: a message history becomes one prompt string, with Qwen3's `enable_thinking` per request.

Tokenizers without a chat template get a plain fallback format (documented in `render_fallback`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def is_messages(prompt: Any) -> bool:
    """True if `prompt` looks like a chat history (a non-empty list of role/content mappings)."""
    return isinstance(prompt, (list, tuple)) and bool(prompt) and all(isinstance(m, Mapping) for m in prompt)


def validate_messages(messages: Sequence[Mapping[str, Any]]) -> None:
    for i, m in enumerate(messages):
        if not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(
                f"message {i} must have string 'role' and 'content' fields, got keys {sorted(m)}; "
                "pass [{'role': 'user', 'content': '...'}, ...]"
            )


def render_fallback(messages: Sequence[Mapping[str, Any]]) -> str:
    """The documented format for tokenizers without a chat template.

    Each message becomes "<role>: <content>" followed by a blank line, and the prompt ends with
    "assistant:" so the model continues as the assistant, e.g. "user: Hi\\n\\nassistant:".
    """
    return "".join(f"{m['role']}: {m['content']}\n\n" for m in messages) + "assistant:"


def render_chat(tokenizer: Any, messages: Sequence[Mapping[str, Any]], enable_thinking: bool | None = None) -> str:
    """Render `messages` with the tokenizer's chat template (add_generation_prompt=True), or the fallback format."""
    validate_messages(messages)
    if not getattr(tokenizer, "chat_template", None):
        return render_fallback(messages)
    # Templates ignore variables they don't use, so enable_thinking is harmless for non-Qwen3 models.
    extra = {} if enable_thinking is None else {"enable_thinking": bool(enable_thinking)}
    try:
        text = tokenizer.apply_chat_template(
            [dict(m) for m in messages], tokenize=False, add_generation_prompt=True, **extra
        )
    except Exception as exc:  # jinja's raise_exception (e.g. roles must alternate) is a user-input problem
        raise ValueError(
            f"the chat template rejected these messages ({type(exc).__name__}: {exc}); "
            "fix the roles/order of the messages"
        ) from exc
    if not isinstance(text, str):  # some versions return a list for batched input
        text = text[0]
    return text


def template_has_reasoning(tokenizer: Any) -> bool:
    """True if the chat template knows <think> blocks (Qwen3-style reasoning models)."""
    template = getattr(tokenizer, "chat_template", None)
    return isinstance(template, str) and THINK_CLOSE in template


def prompt_opens_reasoning(prompt: str) -> bool:
    """True if the prompt ends inside an open <think> block, so the output starts as reasoning."""
    tail = prompt.rstrip()
    return tail.endswith(THINK_OPEN)
