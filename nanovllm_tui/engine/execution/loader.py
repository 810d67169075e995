"""Checkpoint loading: HF config + safetensors into our modules through each parameter's weight_loader."""

from __future__ import annotations

import glob
import json
import math
import os
from collections.abc import Callable
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from nanovllm_tui.layers.parallel_state import get_tp_size

FLOAT_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}  # safetensors dtype codes the loader accepts, and sizes
SAFETENSORS_DTYPES = {
    "I8": "int8",
    "I16": "int16",
    "I32": "int32",
    "I64": "int64",
    "U8": "uint8",
    "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
}


class ModelLoadError(ValueError):
    """The model directory can't be used; the message names the problem and the fix."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))  # one line: messages quote exceptions that span several


def load_hf_config(model_dir: str) -> Any:
    """Read config.json with transformers' AutoConfig, with clear errors for missing or broken files."""
    path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(path):
        raise ModelLoadError(f"{model_dir!r} has no config.json; pass model= a Hugging Face model directory")
    try:
        with open(path) as f:
            json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path} is not valid JSON ({exc}); re-download or re-save the model") from exc
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_dir)
    except Exception as exc:  # transformers raises many kinds here
        raise ModelLoadError(f"transformers cannot read {path}: {exc}") from exc


def weight_files(model_dir: str) -> list[str]:
    files = sorted(glob.glob(os.path.join(model_dir, "*.safetensors")))
    if not files:
        raise ModelLoadError(
            f"{model_dir!r} has no *.safetensors weights; save the model with "
            "save_pretrained(..., safe_serialization=True)"
        )
    return files


def load_model(model: nn.Module, model_dir: str, progress: Callable[[str, int, int, str], None] | None = None) -> None:
    """Load every checkpoint tensor into its (possibly packed, possibly sharded) parameter; progress hears
    ("load", bytes read, bytes of the weight files, "B"). Under tensor parallelism a rank reads only its shard
    of a tensor but counts the whole, so its phase ends at the files' size too."""
    files = weight_files(model_dir)
    total = max(1, sum(os.path.getsize(p) for p in files))  # tensor bytes + small headers: done < total until the end
    done = 0
    tick = progress or _no_progress
    tick("load", 0, total, "B")
    packed = getattr(model, "packed_modules_mapping", {})
    params = dict(model.named_parameters(remove_duplicate=False))
    tied = {
        name for name, p in params.items() if name == "lm_head.weight" and p is params.get("model.embed_tokens.weight")
    }
    loaded: set[str] = set()
    shards: dict[str, set] = {}
    for path in files:
        try:
            f = safe_open(path, "pt", "cpu")
        except Exception as exc:
            raise ModelLoadError(
                f"cannot read {path} ({exc}); the file is truncated or not safetensors — "
                "re-download or re-save the model"
            ) from exc
        with f:
            for name in f.keys():  # noqa: SIM118  (a safe_open handle is not iterable)
                if "rotary_emb.inv_freq" in name or (name in tied):
                    continue
                target, shard = _map_name(name, packed)
                param = params.get(target)
                if param is None:
                    raise ModelLoadError(
                        f"checkpoint tensor {name!r} has no place in the model built from "
                        "config.json; the weights don't match the config"
                    )
                done += _load_tensor(f, path, name, param, shard)
                tick("load", min(done, total - 1), total, "B")
                loaded.add(target)
                if shard is not None:
                    shards.setdefault(target, set()).add(shard)
    for target, got in shards.items():
        module_key = target.split(".")[-2]
        want = {s for m, s in packed.values() if m == module_key}
        if got != want:
            loaded.discard(target)
    missing = sorted(set(params) - loaded - tied)
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise ModelLoadError(f"checkpoint is missing weights {shown}; the weights don't match config.json")
    tick("load", total, total, "B")


def _no_progress(phase: str, done: int, total: int, unit: str) -> None:
    """The progress callback when nobody listens."""


def _load_tensor(f: Any, path: str, name: str, param: nn.Parameter, shard: object) -> int:
    """Read one checkpoint tensor and load it into its parameter (or its shard of a packed parameter); returns
    the tensor's size in the file (bytes)."""
    view = f.get_slice(name)
    dtype = view.get_dtype()
    if dtype not in FLOAT_BYTES:  # copy_() would silently cast integers into garbage weights
        raise ModelLoadError(
            f"checkpoint tensor {name!r} in {path} has dtype {SAFETENSORS_DTYPES.get(dtype, dtype)}; "
            "the engine loads float32/bfloat16/float16 weights — re-save the model unquantized"
        )
    loader = getattr(param, "weight_loader", None)
    try:
        # Under TP a weight loader narrows the tensor to its rank's shard: read only that part.
        tensor = LazySlice(f.get_slice(name)) if loader and get_tp_size() > 1 else f.get_tensor(name)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot read tensor {name!r} from {path} ({exc}); the file is truncated — re-download or re-save the model"
        ) from exc
    try:
        if loader is not None:
            loader(param, tensor) if shard is None else loader(param, tensor, shard)
        elif shard is None and isinstance(tensor, torch.Tensor):  # no loader: read whole, never lazily
            _default_loader(param, tensor)
        else:
            raise ValueError("a packed parameter has no weight_loader; the model class is missing one")
    except ValueError as exc:
        raise ModelLoadError(f"{name}: {exc}") from exc
    return math.prod(view.get_shape()) * FLOAT_BYTES[dtype]


class LazySlice:
    """A checkpoint tensor not read yet: narrow() or indexing reads just that part from the safetensors file."""

    def __init__(self, view: Any) -> None:
        self._view = view
        self.shape = torch.Size(view.get_shape())

    def dim(self) -> int:
        return len(self.shape)

    def narrow(self, dim: int, start: int, length: int) -> torch.Tensor:
        index = [slice(None)] * len(self.shape)
        index[dim] = slice(start, start + length)
        return self._view[tuple(index)]

    def __getitem__(self, index) -> torch.Tensor:
        return self._view[index]


def _map_name(name: str, packed: dict) -> tuple[str, object]:
    for ckpt_key, (module_key, shard) in packed.items():
        if f".{ckpt_key}." in name:
            return name.replace(f".{ckpt_key}.", f".{module_key}."), shard
    return name, None


def _default_loader(param: nn.Parameter, loaded: torch.Tensor) -> None:
    if param.shape != loaded.shape:
        raise ValueError(f"shape {tuple(loaded.shape)} does not match the model's {tuple(param.shape)}")
    param.data.copy_(loaded)
