"""CUDA graphs for decode steps: one captured forward per padded batch size, replayed over static input buffers.

A decode step of B sequences runs the graph of the smallest bucket >= B (1, 2, 4, ... up to
max_num_seqs). The InputBuilder writes the step's inputs straight into the graph's static buffers in
the layout the graph was captured with; rows past B are padding (slot -1: no KV write, context 0:
zeros out). Block tables are as wide as max_model_len needs, so every legal sequence fits.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from engine.input_builder import DeviceBuffers, Layout
from kernels.metadata import AttentionMetadata

GRAPH_BACKENDS = ("triton", "flash-attn")  # the torch reference reads lengths on the host: not capturable


def batch_buckets(max_num_seqs: int) -> list[int]:
    """Powers of two below max_num_seqs, then max_num_seqs itself."""
    sizes, b = [], 1
    while b < max_num_seqs:
        sizes.append(b)
        b *= 2
    return sizes + [max_num_seqs]


def graph_width(max_model_len: int, block_size: int) -> int:
    """Block-table columns for any sequence up to max_model_len tokens (one spare for a lookahead block)."""
    return -(-max_model_len // block_size) + 1


class CUDAGraphRunner:
    """Captures model(input_ids, positions, meta) -> hidden for each bucket; replay returns the bucket's hidden."""

    def __init__(self, forward: Callable[[torch.Tensor, torch.Tensor, AttentionMetadata], torch.Tensor],
                 device: torch.device, max_num_seqs: int, max_model_len: int, block_size: int):
        self.forward = forward
        self.buckets = batch_buckets(max_num_seqs)
        self.width = graph_width(max_model_len, block_size)
        self.max_model_len = max_model_len
        biggest = self.layout(self.buckets[-1])
        self.buffers = DeviceBuffers(device, biggest.size64, biggest.size32, biggest.sizef)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.num_replays = 0

    def layout(self, bucket: int) -> Layout:
        """The fixed layout of a bucket: bucket rows, one token each, every row a sampled row."""
        return Layout(rows=bucket, tokens=bucket, width=self.width, samples=bucket)

    def bucket_for(self, num_seqs: int, max_blocks: int) -> int | None:
        """Smallest bucket that holds the batch, or None (run eagerly)."""
        if max_blocks > self.width:
            return None
        for b in self.buckets:
            if b >= num_seqs:
                return b
        return None

    def meta(self, bucket: int) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        """input_ids, positions and decode metadata as views of the static buffers."""
        v = self.layout(bucket).views(self.buffers.b64, self.buffers.b32, self.buffers.bf)
        meta = AttentionMetadata(slot_mapping=v["slot_mapping"], context_lens=v["context_lens"],
                                 block_tables=v["block_tables"], cu_seqlens_q=v["cu_seqlens_q"], max_seqlen_q=1,
                                 max_seqlen_k=self.max_model_len, is_decode=True)
        return v["input_ids"], v["positions"], meta

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every bucket, largest first so smaller graphs reuse its memory pool."""
        b64, b32 = self.buffers.b64, self.buffers.b32
        pool = None
        for bucket in reversed(self.buckets):
            ids, positions, meta = self.meta(bucket)
            # Inert inputs: nothing is written to the KV cache while capturing.
            b64.zero_()
            b32.zero_()
            meta.slot_mapping.fill_(-1)
            self.forward(ids, positions, meta)  # warm-up: Triton compiles, cuBLAS picks its kernels
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool):
                self.outputs[bucket] = self.forward(ids, positions, meta)
            if pool is None:
                pool = graph.pool()
            self.graphs[bucket] = graph
        torch.cuda.synchronize()

    def replay(self, bucket: int) -> torch.Tensor:
        """Run the bucket's graph on whatever the static buffers hold now; hidden states [bucket, H]."""
        self.graphs[bucket].replay()
        self.num_replays += 1
        return self.outputs[bucket]
