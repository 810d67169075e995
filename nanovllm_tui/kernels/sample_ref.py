"""Plain-torch reference of the fused sampler (nanovllm_tui/kernels/triton_sample.py): the same math, with the noise given."""

from __future__ import annotations

import torch

# 1/T is capped so that a tiny temperature scales logits to huge but finite scores (argmax stays greedy-like)
# instead of inf, or NaN for a logit of exactly 0.
MAX_INV_TEMPERATURE = 1e30


def inverse_temperatures(temperatures: torch.Tensor) -> torch.Tensor:
    """fp32 1/T per row, capped; 1 for greedy rows (T <= 0), which are not scaled."""
    t = temperatures.float()
    inv = torch.where(t > 0, 1.0 / torch.where(t > 0, t, 1.0), 1.0)
    return inv.clamp(max=MAX_INV_TEMPERATURE)


def sample_reference(
    logits: torch.Tensor, temperatures: torch.Tensor, noise: torch.Tensor | None = None
) -> torch.Tensor:
    """One token per row of logits [B, V]: argmax(logits) where T <= 0, else argmax(logits * (1/T) + noise).

    noise [B, V] fp32 is the Gumbel noise the kernel drew (None = noise off); rows with any NaN or
    inf logit give -1; ties pick the lowest index, as torch.argmax does.
    """
    x = logits.float()
    sampled = temperatures > 0
    scores = x * inverse_temperatures(temperatures).unsqueeze(1)
    if noise is not None:
        scores = scores + noise.float()
    scores = torch.where(sampled.unsqueeze(1), scores, x)
    tokens = scores.argmax(dim=-1)
    return torch.where(torch.isfinite(x).all(dim=-1), tokens, -1)
