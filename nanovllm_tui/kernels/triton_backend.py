"""Triton attention backend: Triton store, prefill and flash-decoding kernels behind the AttentionBackend interface."""

from __future__ import annotations

import torch

from nanovllm_tui.kernels.decode_splits import mixed_num_splits
from nanovllm_tui.kernels.metadata import AttentionMetadata
from nanovllm_tui.kernels.triton_decode import paged_decode_attention
from nanovllm_tui.kernels.triton_prefill import paged_prefill_attention
from nanovllm_tui.kernels.triton_qkv import qk_norm_rope_store
from nanovllm_tui.kernels.triton_store_kv import store_kvcache


class TritonBackend:
    """Paged attention in Triton; any power-of-two block size, CUDA-graph safe decode."""

    name = "triton"
    fuses_qkv_prep = True  # layers hand over the raw qkv: prepare_qkv norms, rotates and stores in one kernel

    def store_kvcache(
        self,
        key: torch.Tensor,
        value: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> None:
        store_kvcache(key, value, k_cache, v_cache, slot_mapping)

    def prepare_qkv(
        self,
        qkv: torch.Tensor,
        positions: torch.Tensor,
        cos_cached: torch.Tensor,
        sin_cached: torch.Tensor,
        q_weight: torch.Tensor | None,
        k_weight: torch.Tensor | None,
        eps: float,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> torch.Tensor:
        """qkv [N, (Hq+2*Hkv)*D] -> q [N, Hq, D] normed and rotated; K/V normed, rotated and stored."""
        return qk_norm_rope_store(
            qkv, positions, cos_cached, sin_cached, q_weight, k_weight, eps, k_cache, v_cache, slot_mapping
        )

    def forward(
        self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata, scale: float
    ) -> torch.Tensor:
        if meta.is_decode:
            return paged_decode_attention(q, k_cache, v_cache, meta.context_lens, meta.block_tables, scale)
        if meta.cu_seqlens_q is None:
            raise ValueError("prefill metadata needs cu_seqlens_q")
        # Mixed batches: decode rows (first) go to the decode kernel, which reads each context once per
        # GQA group; in the prefill kernel a one-query row would waste a whole query tile per head.
        out = torch.empty_like(q)
        if meta.graph_rows:
            paged_decode_attention(
                q,
                k_cache,
                v_cache,
                meta.context_lens,
                meta.block_tables,
                scale,
                out=out,
                row_limit=meta.num_decode_dev,
                num_splits=mixed_num_splits(meta.block_tables.shape[1], k_cache.shape[1]),
            )
            return paged_prefill_attention(
                q,
                k_cache,
                v_cache,
                meta.cu_seqlens_q,
                meta.context_lens,
                meta.block_tables,
                scale,
                meta.max_seqlen_q,
                out=out,
                first_row=meta.num_decode_dev,
            )
        d = meta.num_decode_rows
        if d:
            paged_decode_attention(
                q[:d], k_cache, v_cache, meta.context_lens[:d], meta.block_tables[:d], scale, out=out[:d]
            )
        if d < meta.context_lens.shape[0]:
            paged_prefill_attention(
                q,
                k_cache,
                v_cache,
                meta.cu_seqlens_q[d:],
                meta.context_lens[d:],
                meta.block_tables[d:],
                scale,
                meta.max_seqlen_q,
                out=out,
            )
        return out
