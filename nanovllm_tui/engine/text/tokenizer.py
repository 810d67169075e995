"""The tokenizer of a model dir and the token ids that end a generation."""

from __future__ import annotations

import json
import os

# Files a tokenizer is built from; without any, transformers may build an empty one that tokenizes nothing.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tiktoken.model")


def load_tokenizer(model_dir: str):
    """The model dir's tokenizer; ModelLoadError (one line) if it has none that loads."""
    from transformers import AutoTokenizer

    from nanovllm_tui.engine.execution.loader import ModelLoadError

    if not any(os.path.isfile(os.path.join(model_dir, name)) for name in TOKENIZER_FILES):
        raise ModelLoadError(
            f"model directory {model_dir!r} has no tokenizer ({', '.join(TOKENIZER_FILES)}); "
            "copy the model's tokenizer files into it"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load a tokenizer from {model_dir!r} ({type(exc).__name__}: {exc}); "
            "the model directory needs tokenizer.json or tokenizer files"
        ) from exc
    if len(tokenizer) < 2:
        raise ModelLoadError(
            f"the tokenizer in {model_dir!r} has an empty vocabulary; copy the model's tokenizer files into it"
        )
    return tokenizer


def eos_token_ids(model_dir: str, hf_config, tokenizer) -> tuple[int, ...]:
    """EOS ids from generation_config.json, else from the model config and the tokenizer."""
    ids: set[int] = set()

    def add(value) -> None:
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(v for v in value if isinstance(v, int))

    path = os.path.join(model_dir, "generation_config.json")
    if os.path.isfile(path):
        try:
            with open(path) as f:
                add(json.load(f).get("eos_token_id"))
        except (OSError, json.JSONDecodeError):
            pass
    if not ids:
        add(getattr(hf_config, "eos_token_id", None))
        add(tokenizer.eos_token_id)
    return tuple(sorted(ids))
