"""Plain-torch reference of nanovllm_tui/kernels/triton_qkv.py, built from the layers' own eager ops (the unfused path)."""

from __future__ import annotations

import torch

from nanovllm_tui.kernels import torch_ref
from nanovllm_tui.layers.layernorm import rms_norm
from nanovllm_tui.layers.rotary_embedding import apply_rotary


def qk_norm_rope_store(
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
    """Same contract as triton_qkv.qk_norm_rope_store: returns q [N, Hq, D], stores K/V (slot -1 = skip)."""
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    kv_size = num_kv_heads * head_dim
    q, k, v = qkv.split([qkv.shape[1] - 2 * kv_size, kv_size, kv_size], dim=-1)
    q = q.reshape(-1, q.shape[1] // head_dim, head_dim)
    k = k.reshape(-1, num_kv_heads, head_dim)
    if q_weight is not None:
        q = rms_norm(q.reshape(-1, head_dim), q_weight, eps).view(q.shape)
    if k_weight is not None:
        k = rms_norm(k.reshape(-1, head_dim), k_weight, eps).view(k.shape)
    q, k = apply_rotary(positions, q, k, cos_cached, sin_cached)
    torch_ref.store_kvcache(k, v.reshape(-1, num_kv_heads, head_dim), k_cache, v_cache, slot_mapping)
    return q.contiguous()
