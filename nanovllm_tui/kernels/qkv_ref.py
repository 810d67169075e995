"""Plain-torch reference of nanovllm_tui/kernels/triton_qkv.py: the unfused path's arithmetic (RMSNorm, then
rotary, then the K/V store), written here so kernels import no layer. tests/test_qkv_fused.py checks that it
matches the layers' own eager ops (layers/layernorm.py, layers/rotary_embedding.py) bit for bit."""

from __future__ import annotations

import torch

from nanovllm_tui.kernels import torch_ref


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim: fp32 statistics, cast back to x's dtype, then times the weight."""
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin (rotate-half layout), with cos/sin cast to x's dtype first."""
    dtype = x.dtype
    cos, sin = cos.to(dtype), sin.to(dtype)
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


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
    cos = cos_cached[positions].unsqueeze(1)
    sin = sin_cached[positions].unsqueeze(1)
    q, k = rotate(q, cos, sin), rotate(k, cos, sin)
    torch_ref.store_kvcache(k, v.reshape(-1, num_kv_heads, head_dim), k_cache, v_cache, slot_mapping)
    return q.contiguous()
