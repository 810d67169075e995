"""Attention backends: one small interface, implementations chosen by name ("torch", "triton", "flash-attn")."""

from __future__ import annotations

from typing import Protocol

import torch

from nanovllm_tui.kernels import torch_ref
from nanovllm_tui.kernels.metadata import AttentionMetadata

BACKENDS = ("auto", "torch", "triton", "flash-attn")


class AttentionBackend(Protocol):
    """Stores new K/V into the paged cache and attends over it.

    Optional capability: `fuses_qkv_prep = True` with a `prepare_qkv(...)` method (see TritonBackend) takes
    the layer's raw qkv and does q/k RMSNorm, rotary and the K/V store in one kernel. Without it (or before
    the KV cache exists) layers run those ops themselves, then call store_kvcache.
    """

    name: str

    def store_kvcache(
        self,
        key: torch.Tensor,
        value: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> None: ...

    def forward(
        self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata, scale: float
    ) -> torch.Tensor: ...


class TorchBackend:
    """Plain torch over the paged cache; runs anywhere, the reference for the others."""

    name = "torch"
    fuses_qkv_prep = False  # the layers' unfused ops are the reference; keep them

    def store_kvcache(self, key, value, k_cache, v_cache, slot_mapping) -> None:
        torch_ref.store_kvcache(key, value, k_cache, v_cache, slot_mapping)

    def forward(self, q, k_cache, v_cache, meta: AttentionMetadata, scale: float) -> torch.Tensor:
        if meta.is_decode:
            return torch_ref.paged_decode_attention(q, k_cache, v_cache, meta.context_lens, meta.block_tables, scale)
        return torch_ref.paged_prefill_attention(
            q, k_cache, v_cache, meta.cu_seqlens_q, meta.context_lens, meta.block_tables, scale
        )


def get_backend(name: str, device: torch.device, block_size: int) -> AttentionBackend:
    """Resolve a backend name for a device; "auto" picks flash-attn, then Triton on CUDA, torch elsewhere."""
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "torch" or (name == "auto" and device.type != "cuda"):
        return TorchBackend()
    if device.type != "cuda":
        raise ValueError(f"attention backend {name!r} needs a CUDA device; use --attention-backend torch")
    if name in ("auto", "flash-attn"):
        try:
            from nanovllm_tui.kernels.flash_backend import FlashAttnBackend, flash_attn_available

            if flash_attn_available() and block_size % 256 == 0:
                return FlashAttnBackend()
        except ImportError:
            pass
        if name == "flash-attn":
            raise ValueError(
                "flash-attn backend needs the flash-attn package and a block size that is a "
                "multiple of 256; install nanovllm-tui[flash] or use --attention-backend triton"
            )
    try:
        from nanovllm_tui.kernels.triton_backend import TritonBackend
    except ImportError as exc:
        if name == "triton":
            raise ValueError(f"Triton backend unavailable ({exc}); use --attention-backend torch") from exc
        return TorchBackend()
    return TritonBackend()
