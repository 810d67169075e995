"""Attention over the paged KV cache: stores this step's K/V, then calls the chosen kernel backend."""
from __future__ import annotations

import torch
from torch import nn

from kernels.backend import AttentionBackend, TorchBackend
from kernels.metadata import AttentionMetadata


class Attention(nn.Module):
    """q [N, Hq*D], k/v [N, Hkv*D] -> [N, Hq*D]. The model runner sets k_cache/v_cache and the backend."""

    def __init__(self, num_heads: int, head_dim: int, scale: float, num_kv_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.scale = scale
        self.num_kv_heads = num_kv_heads
        self.k_cache = self.v_cache = torch.tensor([])
        self.backend: AttentionBackend = TorchBackend()

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        if self.k_cache.numel():
            self.backend.store_kvcache(k, v, self.k_cache, self.v_cache, meta.slot_mapping)
        o = self.backend.forward(q, self.k_cache, self.v_cache, meta, self.scale)
        return o.reshape(-1, self.num_heads * self.head_dim)
