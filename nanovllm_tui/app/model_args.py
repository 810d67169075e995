"""The --model flag: cheap checks of a model directory before anything loads, or the demo model prepared.

Imports no torch: the checks run before the engine (and its imports) start, so a bad --model fails in one line.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path

from nanovllm_tui.app.engine_args import CliError, cli_message, one_line

SUPPORTED_ARCHITECTURES = ("Qwen3ForCausalLM", "LlamaForCausalLM")


def check_model_dir(path: str) -> None:
    """Cheap checks before loading anything: the engine's own (directory, permissions, no FIFO or other
    non-regular file among the files it opens), then config.json, architecture, weights, tokenizer."""
    from nanovllm_tui.engine.model_dir import ModelDirError
    from nanovllm_tui.engine.model_dir import check_model_dir as check_files

    d = Path(path)
    if d.is_file():
        raise CliError(f"--model {path} is a file, not a directory; point it at the model's directory")
    try:
        check_files(path)
    except ModelDirError as exc:
        raise CliError(cli_message(one_line(exc))) from None
    try:
        archs = json.loads((d / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError, AttributeError) as exc:
        raise CliError(f"--model {path}: config.json is not valid JSON ({exc}); re-download the model") from None
    if not any(a in SUPPORTED_ARCHITECTURES for a in archs):
        raise CliError(
            f"--model {path}: unsupported architecture {archs or 'missing'} in config.json; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    if not any(d.glob("*.safetensors")):
        raise CliError(f"--model {path}: no *.safetensors weights; save the model with safe_serialization=True")
    if not any((d / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise CliError(
            f"--model {path}: no tokenizer (tokenizer.json, tokenizer.model or vocab.json); "
            "save the tokenizer next to the weights"
        )


def resolve_model_dir(args: argparse.Namespace, progress: Callable[[str, int, int, str], None] | None = None) -> str:
    """--model checked cheaply, or the demo model prepared (its phases to progress, see bench/phases.py)."""
    if args.model is None:
        from nanovllm_tui.engine.demo_model import DemoModelError, ensure_demo_model

        try:
            return str(ensure_demo_model(progress=progress))
        except DemoModelError as exc:
            raise CliError(one_line(exc)) from None
    model_dir = os.path.expanduser(args.model)
    check_model_dir(model_dir)
    return model_dir
