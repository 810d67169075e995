"""Vocab-parallel embedding and LM head: each rank holds a slice of the vocabulary."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from nanovllm_tui.layers.linear import set_weight_loader
from nanovllm_tui.layers.parallel_state import all_reduce, get_tp_rank, get_tp_size


class _VocabParallel(nn.Module):
    """A [vocab, dim] weight of which each rank holds a slice of rows (padded to equal slices)."""

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        self.tp_rank, self.tp_size = get_tp_rank(), get_tp_size()
        self.num_embeddings = num_embeddings
        self.per_rank = (num_embeddings + self.tp_size - 1) // self.tp_size
        self.start = self.per_rank * self.tp_rank
        self.end = min(self.start + self.per_rank, num_embeddings)
        self.weight = nn.Parameter(torch.zeros(self.per_rank, embedding_dim), requires_grad=False)
        set_weight_loader(self.weight, self.weight_loader)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor) -> None:
        if loaded.shape[0] != self.num_embeddings or loaded.shape[1] != param.shape[1]:
            raise ValueError(
                f"embedding shape {tuple(loaded.shape)} does not match the model's "
                f"({self.num_embeddings}, {param.shape[1]}); the checkpoint does not match its config.json"
            )
        shard = loaded[self.start : self.end]
        param.data[: shard.shape[0]].copy_(shard)


class VocabParallelEmbedding(_VocabParallel):
    """Embedding lookup; under TP each rank looks up its slice and an all-reduce sums them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return F.embedding(x, self.weight)
        mask = (x >= self.start) & (x < self.end)
        y = F.embedding((x - self.start) * mask, self.weight) * mask.unsqueeze(1).to(self.weight.dtype)
        return all_reduce(y)


class ParallelLMHead(_VocabParallel):
    """Logits for the hidden states given (already the rows to sample); gathered to rank 0 under TP."""

    def forward(self, x: torch.Tensor) -> torch.Tensor | None:
        logits = F.linear(x, self.weight)
        if self.tp_size == 1:
            return logits
        if self.tp_rank != 0:
            dist.gather(logits, None, 0)
            return None
        parts = [torch.empty_like(logits) for _ in range(self.tp_size)]
        dist.gather(logits, parts, 0)
        return torch.cat(parts, -1)[:, : self.num_embeddings]
