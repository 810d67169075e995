"""Per-forward attention metadata: built by the model runner, passed explicitly down to every attention layer."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AttentionMetadata:
    """Where this forward's tokens go in the paged cache and what each query may see.

    slot_mapping  [N]       cache slot of each new token (-1 = padded row, skip)
    cu_seqlens_q  [B+1]     query offsets per sequence (prefill / mixed batches)
    context_lens  [B]       tokens in each sequence's context after this step (keys attended to)
    block_tables  [B, M]    block ids of each sequence, padded with -1
    is_decode               every sequence has exactly one query (decode kernels apply)
    num_decode_rows         mixed batches: the first rows have one query each (the runner puts decodes first),
                            so a backend may send them to its decode kernel
    graph_rows              > 0: a mixed batch inside a CUDA graph: kernels must use grids fixed by shapes, and
    num_decode_dev            read the decode-row count from this device scalar instead of num_decode_rows
    """

    slot_mapping: torch.Tensor
    context_lens: torch.Tensor
    block_tables: torch.Tensor
    cu_seqlens_q: torch.Tensor | None = None
    max_seqlen_q: int = 1
    max_seqlen_k: int = 0
    is_decode: bool = False
    num_decode_rows: int = 0
    graph_rows: int = 0
    num_decode_dev: torch.Tensor | None = None
