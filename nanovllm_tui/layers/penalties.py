"""Repetition / presence / frequency penalties and min_p, with vLLM's meanings, for the torch sampler.

Built only for batches where some request has one (SamplingParams.penalized): the [batch, vocab] prompt mask
and output counts cost nothing otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import Protocol

import torch


class PenaltyParams(Protocol):
    """The fields of a request's SamplingParams that build_penalties reads (layers import nothing above them)."""

    @property
    def repetition_penalty(self) -> float: ...
    @property
    def presence_penalty(self) -> float: ...
    @property
    def frequency_penalty(self) -> float: ...
    @property
    def min_p(self) -> float: ...


class PenalizedSequence(Protocol):
    """What build_penalties reads of a sequence: its tokens, how many are prompt, and its parameters."""

    token_ids: list[int]
    num_prompt_tokens: int

    @property
    def sampling_params(self) -> PenaltyParams: ...


@dataclass
class Penalties:
    """Per-row penalty parameters [B] and token statistics [B, V] on the logits' device."""

    repetition: torch.Tensor  # float32 [B], 1 = off
    presence: torch.Tensor  # float32 [B], 0 = off
    frequency: torch.Tensor  # float32 [B], 0 = off
    min_p: torch.Tensor | None  # float32 [B], None when no row uses it
    seen: torch.Tensor  # bool [B, V]: the token is in the prompt or the output
    output_counts: torch.Tensor  # float32 [B, V]: how often the token is in the output


def build_penalties(seqs: Seq[PenalizedSequence], vocab: int, device: torch.device) -> Penalties:
    """The penalties of one batch's sampled rows, from each sequence's prompt and output token ids."""
    sps = [s.sampling_params for s in seqs]
    b = len(seqs)
    prompt = torch.zeros(b, vocab + 1, dtype=torch.bool)
    counts = torch.zeros(b, vocab + 1, dtype=torch.float32)
    for i, s in enumerate(seqs):
        ids = torch.tensor(s.token_ids, dtype=torch.long).clamp_(0, vocab)  # ids past the head: a dump column
        n = s.num_prompt_tokens
        prompt[i, ids[:n]] = True
        counts[i].index_add_(0, ids[n:], torch.ones(len(ids) - n))
    prompt, counts = prompt[:, :vocab], counts[:, :vocab]
    min_ps = [sp.min_p for sp in sps]
    return Penalties(
        repetition=torch.tensor([sp.repetition_penalty for sp in sps], dtype=torch.float32, device=device),
        presence=torch.tensor([sp.presence_penalty for sp in sps], dtype=torch.float32, device=device),
        frequency=torch.tensor([sp.frequency_penalty for sp in sps], dtype=torch.float32, device=device),
        min_p=torch.tensor(min_ps, dtype=torch.float32, device=device) if max(min_ps, default=0) > 0 else None,
        seen=(prompt | (counts > 0)).to(device),
        output_counts=counts.to(device),
    )


def apply_penalties(logits: torch.Tensor, p: Penalties) -> torch.Tensor:
    """float32 logits [B, V] with the penalties applied (before temperature, as vLLM does)."""
    rep = p.repetition.unsqueeze(1)
    # Repetition: a seen token's logit moves toward "less likely" whatever its sign.
    scaled = torch.where(logits > 0, logits / rep, logits * rep)
    logits = torch.where(p.seen, scaled, logits)
    counts = p.output_counts
    return logits - p.presence.unsqueeze(1) * (counts > 0) - p.frequency.unsqueeze(1) * counts


def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """-inf where a token's probability is below min_p times the row's largest probability (after temperature)."""
    probs = torch.softmax(logits, dim=-1)
    threshold = probs.amax(dim=-1, keepdim=True) * min_p.unsqueeze(1)
    return logits.masked_fill(probs < threshold, float("-inf"))
