"""Shape and stride contracts shared by the Triton paged-attention kernels (decode and prefill)."""

from __future__ import annotations

import torch

LOG2E = 1.4426950408889634  # the kernels use exp2: scores are scaled by this once


def check_paged(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> tuple[int, int]:
    """(block_size, num_kv_heads) of caches [num_blocks, block_size, Hkv, D] that q [N, Hq, D] may attend over."""
    num_heads, head_dim = q.shape[1], q.shape[2]
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    assert num_heads % num_kv_heads == 0 and k_cache.shape[3] == head_dim
    assert head_dim >= 16 and head_dim & (head_dim - 1) == 0, "head_dim must be a power of two >= 16"
    assert block_size & (block_size - 1) == 0, "block_size must be a power of two"
    assert q.stride(-1) == 1 and k_cache.stride() == v_cache.stride() and k_cache.stride(-1) == 1
    return block_size, num_kv_heads
