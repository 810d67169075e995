"""Which device and dtype the engine runs in, from the user's names ("auto", "bf16", ...) and the model config."""

from __future__ import annotations

from typing import Any

import torch


def resolve_device(name: str) -> torch.device:
    """auto -> cuda when a GPU is visible, else cpu; ValueError for a device that cannot be used."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device='cuda' requested but no CUDA GPU is visible; use device='cpu'")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise ValueError(f"device {name!r} is not supported; use auto, cpu or cuda")
    return torch.device(name)


def resolve_dtype(name: str | None, device: torch.device, hf_config: Any) -> torch.dtype:
    """The named dtype, or by default fp32 on CPU and the config's half dtype (else bf16) on GPU."""
    if name is None:
        if device.type == "cpu":
            return torch.float32
        cfg = getattr(hf_config, "dtype", None) or getattr(hf_config, "torch_dtype", None)
        if isinstance(cfg, str):
            cfg = getattr(torch, cfg, None)
        return cfg if cfg in (torch.float16, torch.bfloat16) else torch.bfloat16
    dtypes = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if name not in dtypes:
        raise ValueError(f"dtype {name!r} is not supported; use float32, bfloat16 or float16")
    return dtypes[name]
