"""Attention backends: one small interface, implementations chosen by name ("torch", "triton", "flash-attn")."""

from __future__ import annotations

from typing import Any, Protocol

import torch

from nanovllm_tui.kernels import torch_ref
from nanovllm_tui.kernels.metadata import AttentionMetadata

BACKENDS = ("auto", "torch", "triton", "flash-attn")


class AttentionBackend(Protocol):
    """Stores new K/V into the paged cache and attends over it.

    Optional capability: `fuses_qkv_prep = True` with a `prepare_qkv(...)` method (see TritonBackend) takes
    the layer's raw qkv and does q/k RMSNorm, rotary and the K/V store in one kernel. Without it (or before
    the KV cache exists) layers run those ops themselves, then call store_kvcache; such backends inherit
    UnfusedQKV's prepare_qkv, which is never called.
    """

    name: str
    fuses_qkv_prep: bool

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
    ) -> torch.Tensor: ...

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


class UnfusedQKV:
    """For backends whose layers norm, rotate and store q/k/v themselves (fuses_qkv_prep is False)."""

    fuses_qkv_prep = False

    def prepare_qkv(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not fuse the qkv prep (fuses_qkv_prep is False)")


class TorchBackend(UnfusedQKV):
    """Plain torch over the paged cache; runs anywhere, the reference for the others (the layers' unfused
    ops are the reference too, so the qkv prep stays unfused)."""

    name = "torch"

    def store_kvcache(
        self,
        key: torch.Tensor,
        value: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> None:
        torch_ref.store_kvcache(key, value, k_cache, v_cache, slot_mapping)

    def forward(
        self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata, scale: float
    ) -> torch.Tensor:
        if meta.is_decode:
            return torch_ref.paged_decode_attention(q, k_cache, v_cache, meta.context_lens, meta.block_tables, scale)
        if meta.cu_seqlens_q is None:
            raise ValueError("prefill attention needs cu_seqlens_q in its metadata")
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
        raise ValueError(f"attention backend {name!r} needs a CUDA device; use attention_backend='torch'")
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
                "multiple of 256; install nanovllm-tui[flash] or use attention_backend='triton'"
            )
    try:
        from nanovllm_tui.kernels.triton_backend import TritonBackend
    except ImportError as exc:
        if name == "triton":
            raise ValueError(f"Triton backend unavailable ({exc}); use attention_backend='torch'") from exc
        return TorchBackend()
    return TritonBackend()
