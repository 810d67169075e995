"""Triton attention backend: Triton store, prefill and flash-decoding kernels behind the AttentionBackend interface."""
from __future__ import annotations

import torch

from kernels.metadata import AttentionMetadata
from kernels.triton_decode import paged_decode_attention
from kernels.triton_prefill import paged_prefill_attention
from kernels.triton_store_kv import store_kvcache


class TritonBackend:
    """Paged attention in Triton; any power-of-two block size, CUDA-graph safe decode."""

    name = "triton"

    def store_kvcache(self, key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor,
                      v_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
        store_kvcache(key, value, k_cache, v_cache, slot_mapping)

    def forward(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                meta: AttentionMetadata, scale: float) -> torch.Tensor:
        if meta.is_decode:
            return paged_decode_attention(q, k_cache, v_cache, meta.context_lens, meta.block_tables, scale)
        assert meta.cu_seqlens_q is not None, "prefill metadata needs cu_seqlens_q"
        return paged_prefill_attention(q, k_cache, v_cache, meta.cu_seqlens_q, meta.context_lens,
                                       meta.block_tables, scale, meta.max_seqlen_q)
