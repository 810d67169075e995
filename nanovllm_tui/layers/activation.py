"""SiluAndMul: the gated MLP activation over a merged gate_up projection."""

import torch
import torch.nn.functional as F
from torch import nn


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    gate, up = x.chunk(2, -1)
    return F.silu(gate) * up


class SiluAndMul(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fn = silu_and_mul  # swapped for a torch.compile'd one on CUDA (layers.compiled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)
