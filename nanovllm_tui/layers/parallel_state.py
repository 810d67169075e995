"""Tensor-parallel rank and size, read from torch.distributed (1 rank when it is not initialised)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def get_tp_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_tp_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum a tensor across tensor-parallel ranks (no-op with one rank)."""
    if get_tp_size() > 1:
        dist.all_reduce(x)
    return x
