"""Plain-torch reference of the fused sampler (nanovllm_tui/kernels/triton_sample.py): the same math, with the noise given."""

from __future__ import annotations

import torch

# Below this temperature a row is greedy (vLLM's _SAMPLING_EPS): 1/T would overflow float32 for T < ~3e-39,
# and far above that logits / T overflow for ordinary logits. Also SamplingParams' threshold.
MIN_TEMPERATURE = 1e-5
MAX_INV_TEMPERATURE = 1.0 / MIN_TEMPERATURE


def inverse_temperatures(temperatures: torch.Tensor) -> torch.Tensor:
    """fp32 1/T per row; 1 for greedy rows (T < MIN_TEMPERATURE), which are not scaled."""
    t = temperatures.float()
    sampled = t >= MIN_TEMPERATURE
    inv = torch.where(sampled, 1.0 / torch.where(sampled, t, 1.0), 1.0)
    return inv.clamp(max=MAX_INV_TEMPERATURE)


def sample_reference(
    logits: torch.Tensor, temperatures: torch.Tensor, noise: torch.Tensor | None = None
) -> torch.Tensor:
    """One token per row of logits [B, V]: argmax(logits) where T < MIN_TEMPERATURE, else
    argmax(logits * (1/T) + noise).

    noise [B, V] fp32 is the Gumbel noise the kernel drew (None = noise off); rows whose scores (logits * 1/T,
    or the logits of a greedy row) have any NaN or inf give -1; ties pick the lowest index, as torch.argmax does.
    """
    x = logits.float()
    sampled = temperatures.float() >= MIN_TEMPERATURE
    scaled = torch.where(sampled.unsqueeze(1), x * inverse_temperatures(temperatures).unsqueeze(1), x)
    scores = scaled + noise.float() if noise is not None else scaled
    scores = torch.where(sampled.unsqueeze(1), scores, x)
    tokens = scores.argmax(dim=-1)
    return torch.where(torch.isfinite(scaled).all(dim=-1), tokens, -1)
