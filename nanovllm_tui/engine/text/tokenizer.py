"""The tokenizer of a model dir and the token ids that end a generation."""

from __future__ import annotations

import json
import os


def load_tokenizer(model_dir: str):
    """The model dir's tokenizer; ModelLoadError (one line) if it has none that loads."""
    from transformers import AutoTokenizer

    from nanovllm_tui.engine.execution.loader import ModelLoadError

    try:
        return AutoTokenizer.from_pretrained(model_dir)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load a tokenizer from {model_dir!r} ({type(exc).__name__}: {exc}); "
            "the model directory needs tokenizer.json or tokenizer files"
        ) from exc


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
