"""Sampler: greedy, temperature, top-k and top-p, with optional per-row generators for seeded requests.

On CUDA, batches without top-k/top-p whose caller passes per-row Philox seeds go through one fused
Triton kernel (nanovllm_tui/kernels/triton_sample.py: argmax or Gumbel-max plus the non-finite check, one read of
the logits); everything else takes the torch path below.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

from nanovllm_tui.kernels.sample_ref import MIN_TEMPERATURE
from nanovllm_tui.layers.penalties import Penalties, apply_min_p, apply_penalties


class Sampler(nn.Module):
    """Samples one token per row of logits [B, V].

    temperatures [B] (below MIN_TEMPERATURE, 0 included: greedy), top_ks [B] (-1 = off), top_ps [B] (1 = off).
    On the torch path rows with their own generator draw their noise from it, on the fused path from their
    own Philox seed: either way a seeded request gets the same tokens whatever else shares the batch.
    """

    def forward(
        self,
        logits: torch.Tensor,
        temperatures: torch.Tensor,
        top_ks: torch.Tensor | None,
        top_ps: torch.Tensor | None,
        generators: list[torch.Generator | None] | None = None,
        all_greedy: bool | None = None,
        seeds: torch.Tensor | None = None,
        offsets: torch.Tensor | None = None,
        penalties: Penalties | None = None,
    ) -> torch.Tensor:
        """all_greedy: the caller already knows every row is greedy (saves a device-to-host read).

        seeds / offsets: int64 [B] per-row Philox key and counter on the logits' device (a seeded request:
        its seed and the position of the token being sampled). Passing seeds opts in to the fused CUDA
        kernel (which ignores `generators`) and to flagging: rows whose scores (logits / T, what is sampled
        from) have a NaN or inf come back as -1 on every path, so the caller needs no isfinite pass of its
        own. Without seeds nothing changes. penalties: applied before everything else (greedy rows included,
        as in vLLM); such a batch always takes the torch path.
        """
        if penalties is not None:
            logits = apply_penalties(logits.float(), penalties)
        elif seeds is not None:
            fused = fused_sampler() if logits.is_cuda and top_ks is None and top_ps is None else None
            if fused is not None:
                return fused(logits, temperatures.float(), seeds, offsets)
        flag = seeds is not None
        greedy_rows = temperatures < MIN_TEMPERATURE  # 0, or so small that logits / T would overflow
        told = all_greedy is not None
        if all_greedy is None:
            all_greedy = bool(greedy_rows.all())
        if all_greedy:
            tokens = logits.argmax(dim=-1)  # bf16 -> fp32 is exact, so no upcast is needed for the argmax
            if not flag:
                return tokens
            # argmax picks a NaN or +inf if the row has one: when the caller vouches that all rows are greedy,
            # checking the picked logit is enough (no extra pass); else every logit is checked, as when sampling.
            if told:
                return _flag(tokens, torch.isfinite(logits.gather(1, tokens.unsqueeze(1)).squeeze(1)))
            return _flag(tokens, torch.isfinite(logits).all(dim=-1))
        logits = logits.float()
        greedy = logits.argmax(dim=-1)
        temps = torch.where(greedy_rows, torch.ones_like(temperatures), temperatures)
        logits = logits / temps.unsqueeze(1)
        finite = torch.isfinite(logits).all(dim=-1) if flag else None
        if penalties is not None and penalties.min_p is not None:
            logits = apply_min_p(logits, penalties.min_p)
        if top_ks is not None:
            logits = _apply_top_k(logits, top_ks)
        if top_ps is not None:
            logits = _apply_top_p(logits, top_ps)
        probs = torch.softmax(logits, dim=-1)
        sampled = probs.div(_exponential_noise(probs, generators).clamp_min(1e-10)).argmax(dim=-1)
        tokens = torch.where(greedy_rows, greedy, sampled)
        return tokens if finite is None else _flag(tokens, finite)


def _exponential_noise(probs: torch.Tensor, generators: list[torch.Generator | None] | None) -> torch.Tensor:
    """Exp(1) noise shaped like probs (Gumbel-max via probs / noise); rows with a generator draw from it."""
    noise = torch.empty_like(probs)
    if generators is None or not any(g is not None for g in generators):
        return noise.exponential_()
    for i, g in enumerate(generators):
        # Per-row draws on the CPU generator keep seeded rows independent of the batch.
        row = torch.empty(probs.shape[1], dtype=torch.float32).exponential_(generator=g)
        noise[i] = row.to(noise.device)
    return noise


@functools.cache
def fused_sampler() -> Callable[..., torch.Tensor] | None:
    """kernels.triton_sample.sample, or None where Triton cannot be imported (the torch path then serves)."""
    try:
        from nanovllm_tui.kernels.triton_sample import sample
    except ImportError:
        return None
    return sample


def _flag(tokens: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
    """-1 where a row's scores are not finite (the torch path's counterpart of the fused kernel's check)."""
    return torch.where(finite, tokens, -1)


def _apply_top_k(logits: torch.Tensor, top_ks: torch.Tensor) -> torch.Tensor:
    vocab = logits.shape[1]
    k = torch.where(top_ks < 1, torch.full_like(top_ks, vocab), top_ks.clamp(max=vocab))
    sorted_logits = logits.sort(dim=-1, descending=True).values
    kth = sorted_logits.gather(1, (k - 1).unsqueeze(1).long())
    return logits.masked_fill(logits < kth, float("-inf"))


def _apply_top_p(logits: torch.Tensor, top_ps: torch.Tensor) -> torch.Tensor:
    sorted_logits, idx = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    cum = probs.cumsum(dim=-1)
    # Drop a token when the mass before it already reaches top_p; the first token always stays.
    drop = (cum - probs) >= top_ps.unsqueeze(1)
    drop[:, 0] = False
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(1, idx, sorted_logits)
