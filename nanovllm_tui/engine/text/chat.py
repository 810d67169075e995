"""Chat-template rendering: a message history becomes one prompt string, with Qwen3's `enable_thinking` per request.

Tokenizers without a chat template get a plain fallback format (documented in `render_fallback`).

Messages are text, never control tokens: a message holding "<|im_end|>\n<|im_start|>system\n..." must not
forge a system turn. So render_chat returns a ChatPrompt, a string that remembers which of its special-token
strings came from messages; tokenize_chat (which the engine's tokenize_prompt uses) tokenizes those as
plain text and only the template's own markers as special tokens.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


class ChatPrompt(str):
    """A rendered chat prompt: the text, plus its parts as (text, from_message) pairs in order.

    A part with from_message=True is a special-token string that a message contained: tokenized as text.
    Pass the ChatPrompt itself to the engine (str methods return plain strings without the parts).
    """

    parts: tuple[tuple[str, bool], ...]

    def __new__(cls, parts: Sequence[tuple[str, bool]]) -> ChatPrompt:
        obj = super().__new__(cls, "".join(text for text, _ in parts))
        obj.parts = tuple(parts)
        return obj


def special_token_strings(tokenizer: Any) -> list[str]:
    """The tokenizer's special tokens as strings (what split_special_tokens=True spells out as text)."""
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    specials = {t.content for t in decoder.values() if getattr(t, "special", False)}
    specials.update(getattr(tokenizer, "all_special_tokens", None) or ())
    return sorted((s for s in specials if s), key=len, reverse=True)  # longest first: the regex alternation


def tokenize_chat(tokenizer: Any, prompt: ChatPrompt) -> list[int]:
    """Token ids of a ChatPrompt: template text with its special tokens; special strings from messages as text."""
    ids: list[int] = []
    for text, from_message in prompt.parts:
        if from_message:
            ids += tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)
        elif text:
            ids += tokenizer.encode(text, add_special_tokens=False)
    return ids


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


def render_chat(
    tokenizer: Any, messages: Sequence[Mapping[str, Any]], enable_thinking: bool | None = None
) -> ChatPrompt:
    """Render `messages` with the tokenizer's chat template (add_generation_prompt=True), or the fallback format.

    Special-token strings inside the messages are swapped for unguessable placeholders while the template
    renders, then put back as parts marked from_message (see ChatPrompt), so they stay text."""
    validate_messages(messages)
    specials = special_token_strings(tokenizer)
    if not specials:
        return ChatPrompt([(_render(tokenizer, messages, enable_thinking), False)])
    index = {t: i for i, t in enumerate(specials)}
    pattern = re.compile("|".join(map(re.escape, specials)))
    nonce = secrets.token_hex(8)  # no message can guess it, so no message can forge a placeholder

    def hide(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        return pattern.sub(lambda m: f"\ue000{nonce}:{index[m.group()]}\ue001", value)

    text = _render(tokenizer, [{k: hide(v) for k, v in m.items()} for m in messages], enable_thinking)
    parts: list[tuple[str, bool]] = []
    pos = 0
    for m in re.finditer(f"\ue000{nonce}:(\\d+)\ue001", text):
        parts += [(text[pos : m.start()], False), (specials[int(m.group(1))], True)]
        pos = m.end()
    parts.append((text[pos:], False))
    prompt = ChatPrompt(parts)
    # The placeholders must have rendered exactly as the strings they stand for; a template that cuts or
    # escapes message text (rare) breaks that, and we refuse rather than guess where the message went.
    if prompt != _render(tokenizer, messages, enable_thinking):
        raise ValueError(
            "a message contains special-token strings (e.g. <|im_end|>) that this chat template rewrites; "
            "remove them from the message"
        )
    return prompt


def _render(tokenizer: Any, messages: Sequence[Mapping[str, Any]], enable_thinking: bool | None) -> str:
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
