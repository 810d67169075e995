"""flash-attn backend (optional package): varlen prefill and paged decode over the block table, Triton KV store."""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

from nanovllm_tui.kernels.backend import UnfusedQKV
from nanovllm_tui.kernels.metadata import AttentionMetadata


def flash_attn_available() -> bool:
    """True when the flash_attn package can be imported (it is an optional extra)."""
    if importlib.util.find_spec("flash_attn") is None:
        return False
    try:
        import flash_attn  # noqa: F401
    except ImportError:  # installed but built against another torch/CUDA
        return False
    return True


class FlashAttnBackend(UnfusedQKV):
    """flash-attn's paged kernels; they need block_size to be a multiple of 256."""

    name = "flash-attn"

    def __init__(self) -> None:
        # Imported here so that merely importing this module never requires flash-attn.
        from flash_attn import flash_attn_varlen_func, flash_attn_with_kvcache

        from nanovllm_tui.kernels.triton_store_kv import store_kvcache

        self._varlen = flash_attn_varlen_func
        self._with_kvcache = flash_attn_with_kvcache
        self._store = store_kvcache

    def store_kvcache(
        self,
        key: torch.Tensor,
        value: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> None:
        self._store(key, value, k_cache, v_cache, slot_mapping)

    def forward(
        self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata, scale: float
    ) -> torch.Tensor:
        block_tables = meta.block_tables.to(torch.int32)
        context_lens = meta.context_lens.to(torch.int32)
        if meta.is_decode:
            out = self._with_kvcache(
                q.unsqueeze(1),
                k_cache,
                v_cache,
                cache_seqlens=context_lens,
                block_table=block_tables,
                softmax_scale=scale,
                causal=True,
            )
            return out.squeeze(1)
        assert meta.cu_seqlens_q is not None, "prefill metadata needs cu_seqlens_q"
        cu_seqlens_k = F.pad(torch.cumsum(context_lens, 0, dtype=torch.int32), (1, 0))
        # Prefill is never graph-captured, so a host read is acceptable when the runner left max_seqlen_k unset.
        max_seqlen_k = meta.max_seqlen_k or int(context_lens.max())
        return self._varlen(
            q,
            k_cache,
            v_cache,
            cu_seqlens_q=meta.cu_seqlens_q.to(torch.int32),
            cu_seqlens_k=cu_seqlens_k,
            max_seqlen_q=meta.max_seqlen_q,
            max_seqlen_k=max_seqlen_k,
            softmax_scale=scale,
            causal=True,
            block_table=block_tables,
        )
