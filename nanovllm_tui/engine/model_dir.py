"""Cheap checks of a model directory before anything reads it, and of the config.json values the engine uses.

Each failure is one line that says what is wrong (missing, permission denied, not a regular file, an invalid
config value) and names the argument, `model`. Type checks come before any open(): opening a FIFO named
model.safetensors would block forever.
"""

from __future__ import annotations

import numbers
import os
import stat
from typing import Any

# Files the engine or transformers may open: a non-regular file among them fails the check.
READ_SUFFIXES = (".json", ".safetensors", ".model", ".txt", ".jinja", ".tiktoken")
# (attribute, required): config.json values that must be positive integers.
POSITIVE_INTS = (
    ("vocab_size", True),
    ("hidden_size", True),
    ("num_hidden_layers", True),
    ("num_attention_heads", True),
    ("intermediate_size", True),
    ("num_key_value_heads", False),
    ("head_dim", False),
    ("max_position_embeddings", False),
)
POSITIVE_FLOATS = ("rms_norm_eps", "rope_theta")
FILE_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


class ModelDirError(ValueError):
    """The model directory can't be used; the one-line message says why and what to pass instead."""


def check_model_dir(model: str) -> str:
    """The model directory with ~ expanded, after checking it and the files the engine will open."""
    path = os.path.expanduser(model)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ModelDirError(
            f"model directory {path!r} does not exist; pass model= a Hugging Face model directory "
            "(config.json + *.safetensors)"
        ) from None
    except OSError as exc:
        raise ModelDirError(
            f"model directory {path!r} cannot be read ({exc.strerror}); check its permissions"
        ) from None
    if not stat.S_ISDIR(st.st_mode):
        raise ModelDirError(f"model {path!r} is not a directory; pass model= the directory holding config.json")
    if not os.access(path, os.R_OK | os.X_OK):
        raise ModelDirError(f"model directory {path!r}: permission denied; make it readable by this user")
    if not os.path.lexists(os.path.join(path, "config.json")):
        raise ModelDirError(f"model directory {path!r} has no config.json; pass model= a Hugging Face model directory")
    for name in sorted(os.listdir(path)):
        if name.endswith(READ_SUFFIXES):
            _check_file(os.path.join(path, name))
    return path


def _check_file(path: str) -> None:
    """A file the engine may open: a readable regular file (following symlinks)."""
    try:
        st = os.stat(path)
    except OSError as exc:  # e.g. a symlink to a blob that is gone
        raise ModelDirError(f"{path} cannot be read ({exc.strerror}); re-download the model") from None
    if not stat.S_ISREG(st.st_mode):
        kind = FILE_KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise ModelDirError(f"{path} is {kind}, not a regular file; replace it with the model's file")
    if not os.access(path, os.R_OK):
        raise ModelDirError(f"{path}: permission denied; make it readable by this user")


def check_hf_config(hf_config: Any, path: str) -> None:
    """The config.json values the engine builds the model from: positive integers and positive numbers."""
    for name, required in POSITIVE_INTS:
        value = getattr(hf_config, name, None)
        if value is None and not required:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ModelDirError(
                f"{path}: invalid config value {name}={value!r}; it must be a positive integer (fix config.json)"
            )
    for name in POSITIVE_FLOATS:
        value = getattr(hf_config, name, None)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < float(value) < float("inf"):
            raise ModelDirError(
                f"{path}: invalid config value {name}={value!r}; it must be a positive number (fix config.json)"
            )
