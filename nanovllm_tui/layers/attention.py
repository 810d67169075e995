"""Attention over the paged KV cache: stores this step's K/V, then calls the chosen kernel backend."""

from __future__ import annotations

import torch
from torch import nn

from nanovllm_tui.kernels.backend import AttentionBackend, TorchBackend
from nanovllm_tui.kernels.metadata import AttentionMetadata
from nanovllm_tui.layers.layernorm import RMSNorm
from nanovllm_tui.layers.rotary_embedding import RotaryEmbedding


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

    @property
    def fuses_qkv_prep(self) -> bool:
        """The backend takes the raw qkv (forward_qkv) and the KV cache exists (warm-up runs have none)."""
        return getattr(self.backend, "fuses_qkv_prep", False) and self.k_cache.numel() > 0

    def forward_qkv(
        self,
        qkv: torch.Tensor,
        positions: torch.Tensor,
        rotary: RotaryEmbedding,
        q_norm: RMSNorm | None,
        k_norm: RMSNorm | None,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        """qkv [N, (Hq+2*Hkv)*D] -> [N, Hq*D]: per-head norms, rotary and the K/V store in one backend kernel."""
        eps = q_norm.eps if q_norm is not None else (k_norm.eps if k_norm is not None else 0.0)
        if q_norm is not None and k_norm is not None and q_norm.eps != k_norm.eps:
            raise ValueError(f"fused q/k norms need one eps, got {q_norm.eps} and {k_norm.eps}")
        q = self.backend.prepare_qkv(
            qkv,
            positions,
            rotary.cos_cached,
            rotary.sin_cached,
            None if q_norm is None else q_norm.weight,
            None if k_norm is None else k_norm.weight,
            eps,
            self.k_cache,
            self.v_cache,
            meta.slot_mapping,
        )
        o = self.backend.forward(q, self.k_cache, self.v_cache, meta, self.scale)
        return o.reshape(-1, self.num_heads * self.head_dim)
