"""Checks on a text prompt before it reaches the tokenizer: valid Unicode, and not hopelessly long.

Tokenizing costs about 3-5 s per MB, so a prompt that cannot fit max_model_len whatever it
tokenizes to is rejected by its length in characters first. The bound is safe: a token never
covers more characters than its vocabulary string has (byte-level BPE spells every byte), so
tokens >= chars / longest; the factor 2 leaves room for normalizers that compose characters.
"""

from __future__ import annotations

from typing import Any

CHEAP_CHARS_PER_TOKEN = 4  # below max_model_len * this many characters, just tokenize


def longest_token_chars(tokenizer: Any) -> int:
    """Characters in the longest vocabulary entry (special tokens included)."""
    return max((len(t) for t in tokenizer.get_vocab()), default=1)


def check_prompt_text(prompt: str, max_model_len: int, tokenizer: Any) -> None:
    """Raise ValueError for a prompt with lone surrogates, or far too long to fit max_model_len tokens."""
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"prompt is not valid Unicode ({exc.reason}: {prompt[exc.start]!r} at index {exc.start}); "
            "remove or replace the lone surrogate"
        ) from None
    if len(prompt) <= max_model_len * CHEAP_CHARS_PER_TOKEN:
        return
    limit = 2 * max_model_len * longest_token_chars(tokenizer)
    if len(prompt) > limit:
        raise ValueError(
            f"prompt has {len(prompt)} characters, more than max_model_len={max_model_len} tokens can "
            f"hold (at most {limit} characters); shorten the prompt or raise max_model_len"
        )
