"""torch.compile for the small pure ops (RMSNorm, residual-add + RMSNorm, SiLU-and-mul, rotary), CUDA only.

Each op is several elementwise kernels in eager mode; compiled, it is one fused Triton kernel. The
modules hold their op as an attribute, so compiling swaps functions on one model instance and the
CPU path (and every other model) stays eager.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from nanovllm_tui.layers.activation import SiluAndMul, silu_and_mul
from nanovllm_tui.layers.layernorm import RMSNorm, add_rms_norm, rms_norm
from nanovllm_tui.layers.rotary_embedding import RotaryEmbedding, apply_rotary

log = logging.getLogger(__name__)
_OPTIONS: dict[str, str | int | bool | Callable[..., Any]] = {"emulate_precision_casts": True}


@functools.cache
def _compiled(fn):
    """One compiled wrapper per function, shared by every layer.

    Automatic dynamic shapes: after the first shape change only the token dimension becomes symbolic,
    so feature sizes stay static and never alias it (duck sizing would recompile at N == hidden size).
    No fullgraph: past the recompile limit (several dtypes/models in one process) dynamo runs the
    op eagerly instead of failing the step. Precision casts are emulated: the fused kernel rounds to
    bf16 where the eager op (and transformers) does, so compiling changes speed, not tokens.
    """
    return torch.compile(fn, options=_OPTIONS)


def _toolchain_works(device: torch.device) -> bool:
    """Compile a throwaway function, so a broken toolchain shows here, not mid-capture."""
    try:
        x = torch.ones(4, device=device)
        return bool(torch.compile(lambda t: t * 2 + 1, options=_OPTIONS)(x).eq(3).all())
    except Exception as exc:  # inductor needs a working Triton/compiler toolchain; eager still works
        log.warning("torch.compile unavailable (%s: %s); small ops stay eager", type(exc).__name__, exc)
        return False


def compile_small_ops(model: nn.Module, device: torch.device, dtype: torch.dtype) -> bool:
    """Swap in compiled ops on CUDA; returns False (model untouched) off CUDA or if compilation fails."""
    if device.type != "cuda" or not _toolchain_works(device):
        return False
    for m in model.modules():
        if isinstance(m, RMSNorm):
            m.norm_fn, m.add_norm_fn = _compiled(rms_norm), _compiled(add_rms_norm)
        elif isinstance(m, SiluAndMul):
            m.fn = _compiled(silu_and_mul)
        elif isinstance(m, RotaryEmbedding):
            m.fn = _compiled(apply_rotary)
    return True
