"""Linear layers: replicated, column-parallel (plain, merged, QKV) and row-parallel with all-reduce."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from nanovllm_tui.layers.parallel_state import all_reduce, get_tp_rank, get_tp_size

WeightLoader = Callable[..., None]  # (param, checkpoint tensor[, shard id]) -> None


def set_weight_loader(param: nn.Parameter, loader: WeightLoader) -> None:
    """Attach how a checkpoint tensor loads into `param`: engine/execution/loader.py calls param.weight_loader
    (nano-vllm's and vLLM's convention: the model stays tensor-parallel agnostic)."""
    setattr(param, "weight_loader", loader)  # noqa: B010  (torch's Parameter declares no such attribute)


def divide(numerator: int, denominator: int) -> int:
    if numerator % denominator:
        raise ValueError(
            f"{numerator} is not divisible by tensor_parallel_size={denominator}; "
            "choose a tensor-parallel size that divides the model's heads and sizes"
        )
    return numerator // denominator


class LinearBase(nn.Module):
    """A weight (and optional bias) split along tp_dim (None = replicated), loaded shard by shard."""

    def __init__(self, input_size: int, output_size: int, bias: bool, tp_dim: int | None):
        super().__init__()
        self.tp_dim = tp_dim
        self.tp_rank = get_tp_rank()
        self.tp_size = get_tp_size()
        self.weight = nn.Parameter(torch.empty(output_size, input_size), requires_grad=False)
        set_weight_loader(self.weight, self.weight_loader)
        if bias:
            self.bias = nn.Parameter(torch.empty(output_size), requires_grad=False)
            set_weight_loader(self.bias, self.weight_loader)
        else:
            self.register_parameter("bias", None)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: int | str | None = None) -> None:
        """Load this rank's part of a whole checkpoint tensor (packed layers override: one shard at a time)."""
        if shard_id is not None:
            raise ValueError(f"{type(self).__name__} is not a packed layer; got shard {shard_id!r}")
        if self.tp_dim is not None and param.dim() > self.tp_dim and self.tp_size > 1:
            size = param.size(self.tp_dim)
            loaded = loaded.narrow(self.tp_dim, self.tp_rank * size, size)
        _copy_checked(param.data, loaded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


def _copy_checked(dst: torch.Tensor, src) -> None:
    src = src if isinstance(src, torch.Tensor) else src[:]  # a loader.LazySlice that was not narrowed: read it all
    if dst.shape != src.shape:
        raise ValueError(
            f"weight shape {tuple(src.shape)} does not match the model's {tuple(dst.shape)}; "
            "the checkpoint does not match its config.json"
        )
    dst.copy_(src)


class ReplicatedLinear(LinearBase):
    def __init__(self, input_size: int, output_size: int, bias: bool = False):
        super().__init__(input_size, output_size, bias, None)


class ColumnParallelLinear(LinearBase):
    """Output features split across ranks; no communication."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False):
        super().__init__(input_size, divide(output_size, get_tp_size()), bias, 0)


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel outputs in one matmul (gate_up); each checkpoint tensor loads into its slice."""

    def __init__(self, input_size: int, output_sizes: list[int], bias: bool = False):
        self.output_sizes = output_sizes
        super().__init__(input_size, sum(output_sizes), bias)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: int | str | None = None) -> None:
        """Load output `shard_id` (0, 1, ...) of the merged layer into its slice."""
        if not isinstance(shard_id, int) or not 0 <= shard_id < len(self.output_sizes):
            raise ValueError(f"merged layer shard must be 0..{len(self.output_sizes) - 1}, got {shard_id!r}")
        offset = sum(self.output_sizes[:shard_id]) // self.tp_size
        size = self.output_sizes[shard_id] // self.tp_size
        dst = param.data.narrow(0, offset, size)
        if self.tp_size > 1:
            loaded = loaded.narrow(0, self.tp_rank * size, size)
        _copy_checked(dst, loaded)


class QKVParallelLinear(ColumnParallelLinear):
    """q, k and v projections in one matmul; kv heads are split across ranks, or replicated when fewer than ranks."""

    def __init__(
        self, hidden_size: int, head_size: int, total_num_heads: int, total_num_kv_heads: int, bias: bool = False
    ):
        tp_size = get_tp_size()
        self.head_size = head_size
        self.num_heads = divide(total_num_heads, tp_size)
        if total_num_kv_heads >= tp_size:
            self.num_kv_heads = divide(total_num_kv_heads, tp_size)
            self.kv_replicas = 1
        else:
            self.num_kv_heads = 1
            self.kv_replicas = divide(tp_size, total_num_kv_heads)
        output_size = (self.num_heads + 2 * self.num_kv_heads) * head_size * tp_size
        super().__init__(hidden_size, output_size, bias)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: int | str | None = None) -> None:
        """Load the q, k or v projection (shard_id) into its slice; replicated kv heads take their group's."""
        if shard_id not in ("q", "k", "v"):
            raise ValueError(f"qkv shard must be 'q', 'k' or 'v', got {shard_id!r}")
        q_size = self.num_heads * self.head_size
        kv_size = self.num_kv_heads * self.head_size
        if shard_id == "q":
            offset, size, rank = 0, q_size, self.tp_rank
        else:
            offset = q_size if shard_id == "k" else q_size + kv_size
            size, rank = kv_size, self.tp_rank // self.kv_replicas
        dst = param.data.narrow(0, offset, size)
        if self.tp_size > 1:
            loaded = loaded.narrow(0, rank * size, size)
        _copy_checked(dst, loaded)


class RowParallelLinear(LinearBase):
    """Input features split across ranks; partial results summed with an all-reduce."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False):
        super().__init__(divide(input_size, get_tp_size()), output_size, bias, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias if self.tp_rank == 0 else None)
        return all_reduce(y)
