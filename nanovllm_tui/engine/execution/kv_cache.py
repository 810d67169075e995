"""The paged KV cache: how many blocks it gets (a count, a byte budget, or the GPU memory left) and binding it
to the attention layers."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist

from nanovllm_tui.engine.config import Config
from nanovllm_tui.kernels.backend import AttentionBackend
from nanovllm_tui.layers.attention import Attention
from nanovllm_tui.layers.parallel_state import get_tp_size

DEFAULT_CPU_KV_CACHE_BYTES = 1 << 30


def block_bytes(layers: list[Attention], block_size: int, dtype: torch.dtype) -> int:
    """Bytes of one block across every layer: K and V of block_size tokens."""
    attn = layers[0]
    per_token = 2 * len(layers) * attn.num_kv_heads * attn.head_dim
    return per_token * block_size * dtype.itemsize


def num_blocks(cfg: Config, device: torch.device, nbytes: int, measure_peak: Callable[[], int]) -> int:
    """Blocks of `nbytes` each: the configured count, or what kv_cache_memory holds, or on CUDA what
    gpu_memory_utilization leaves after the weights and a step's activation peak (measure_peak)."""
    if cfg.num_kvcache_blocks is not None:
        return cfg.num_kvcache_blocks
    if cfg.kv_cache_memory is not None:
        num = cfg.kv_cache_memory // nbytes
        if num < 1:
            raise ValueError(
                f"kv_cache_memory={cfg.kv_cache_memory} bytes holds no block of {nbytes} bytes; "
                "raise kv_cache_memory= or lower kvcache_block_size="
            )
        return num
    if device.type == "cuda":
        peak = measure_peak()
        free, total = torch.cuda.mem_get_info(device)
        used = total - free
        budget = int(total * cfg.gpu_memory_utilization) - used - peak
        num = budget // nbytes
        if num < 1:
            raise ValueError(
                f"no GPU memory left for the KV cache at gpu_memory_utilization="
                f"{cfg.gpu_memory_utilization}; raise gpu_memory_utilization="
            )
        return num
    return max(1, DEFAULT_CPU_KV_CACHE_BYTES // nbytes)


def agree_on_blocks(num: int, device: torch.device) -> int:
    """Every tensor-parallel rank must hold the same blocks: the smallest count any rank can afford."""
    if get_tp_size() == 1:
        return num
    agreed = torch.tensor([num], device=device)
    dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
    return int(agreed.item())


def bind_kv_cache(
    layers: list[Attention],
    backend: AttentionBackend,
    num: int,
    block_size: int,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """Allocate a [2, layers, blocks, block_size, kv_heads, head_dim] cache and point every layer at it."""
    attn = layers[0]
    shape = (2, len(layers), num, block_size, attn.num_kv_heads, attn.head_dim)
    kv_cache = torch.zeros(shape, dtype=dtype, device=device)
    for i, layer in enumerate(layers):
        layer.k_cache, layer.v_cache = kv_cache[0, i], kv_cache[1, i]
        layer.backend = backend
    return kv_cache


def unbind_kv_cache(layers: list[Attention]) -> torch.Tensor:
    """Point every layer at an empty cache (it stores nothing), which is returned."""
    empty = torch.tensor([])
    for layer in layers:
        layer.k_cache = layer.v_cache = empty
    return empty


def first_line(exc: BaseException) -> str:
    """An allocator's error on one line (CUDA OOM messages span several), so the ValueError stays one line."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
