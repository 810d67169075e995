"""CUDA graphs for decode steps: one captured forward per padded batch size, replayed over static input buffers.

A decode step of B sequences runs the graph of the smallest bucket >= B (1, 2, 4, ... up to
max_num_seqs). The InputBuilder writes the step's inputs straight into the graph's static buffers in
the layout the graph was captured with; rows past B are padding (slot -1: no KV write, context 0:
zeros out). Block tables are as wide as max_model_len needs, so every legal sequence fits.
With a `sample` function, each bucket also gets a sampling graph (LM head + fused sampler over the
bucket's hidden states and sampling fields): a decode step is then two graph replays, no per-kernel
launches, which is most of the host's launch cost per step (the sampler's launch alone ~50 µs).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from nanovllm_tui.engine.config import Config
from nanovllm_tui.engine.execution.input_layout import DeviceBuffers, Layout
from nanovllm_tui.kernels.metadata import AttentionMetadata
from nanovllm_tui.layers.parallel_state import get_tp_size
from nanovllm_tui.layers.sampler import fused_sampler
from nanovllm_tui.models.llama import LlamaForCausalLM

# Sampling graphs: (hidden [rows, H], temperatures fp32 [rows], seeds int64 [rows], offsets int64 [rows]) -> tokens.
SampleFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

GRAPH_BACKENDS = ("triton", "flash-attn")  # the torch reference reads lengths on the host: not capturable
MIXED_GRAPH_BACKENDS = ("triton",)  # kernels with shape-only grids for prefill and mixed batches
# Fine steps up to 2048: a step of a capped prompt chunk beside decodes (mixed_prefill_tokens) pads to the next
# step, and padding is GEMM work the inter-token latency pays for.
MIXED_TOKEN_STEPS = (256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2560, 3072, 4096, 5120, 6144, 7168, 8192)


def batch_buckets(max_num_seqs: int) -> list[int]:
    """Powers of two below max_num_seqs, then max_num_seqs itself."""
    sizes, b = [], 1
    while b < max_num_seqs:
        sizes.append(b)
        b *= 2
    return [*sizes, max_num_seqs]


def token_buckets(max_num_batched_tokens: int) -> list[int]:
    """Token counts of the mixed-batch graphs: MIXED_TOKEN_STEPS below the budget, then the budget itself."""
    return [t for t in MIXED_TOKEN_STEPS if t < max_num_batched_tokens] + [max_num_batched_tokens]


def graph_width(max_model_len: int, block_size: int) -> int:
    """Block-table columns for any sequence up to max_model_len tokens (one spare for a lookahead block)."""
    return -(-max_model_len // block_size) + 1


class CUDAGraphRunner:
    """Captures model(input_ids, positions, meta) -> hidden for each bucket; replay returns the bucket's hidden."""

    def __init__(
        self,
        forward: Callable[[torch.Tensor, torch.Tensor, AttentionMetadata], torch.Tensor],
        device: torch.device,
        max_num_seqs: int,
        max_model_len: int,
        block_size: int,
        max_num_batched_tokens: int = 0,
        sample: SampleFn | None = None,
    ):
        self.forward = forward
        self.sample = sample  # (hidden rows, temperatures, seeds, offsets) -> tokens, or None: no sampling graphs
        self.buckets = batch_buckets(max_num_seqs)
        self.rows = max_num_seqs  # every mixed graph has this many rows (padded)
        # Mixed (prefill + decode) graphs, one per token bucket; none when max_num_batched_tokens is 0.
        self.token_buckets = token_buckets(max_num_batched_tokens) if max_num_batched_tokens else []
        self.width = graph_width(max_model_len, block_size)
        self.max_model_len = max_model_len
        layouts = [self.layout(self.buckets[-1])] + [self.mixed_layout(t) for t in self.token_buckets]
        self.buffers = DeviceBuffers(
            device, max(x.size64 for x in layouts), max(x.size32 for x in layouts), max(x.sizef for x in layouts)
        )
        self.graphs: dict[tuple[str, int], torch.cuda.CUDAGraph] = {}  # ("decode" | "mixed" | "sample", size)
        self.outputs: dict[tuple[str, int], torch.Tensor] = {}
        self.num_replays = 0
        self.num_sampled_replays = 0  # of those, decode steps that sampled in their sampling graph

    def layout(self, bucket: int) -> Layout:
        """The fixed layout of a bucket: bucket rows, one token each, every row a sampled row."""
        return Layout(rows=bucket, tokens=bucket, width=self.width, samples=bucket)

    def mixed_layout(self, tokens: int, samples: int | None = None) -> Layout:
        """The fixed layout of a mixed graph: all rows, `tokens` query tokens (samples only move sampling fields)."""
        return Layout(
            rows=self.rows, tokens=tokens, width=self.width, samples=self.rows if samples is None else samples
        )

    def mixed_bucket_for(self, num_tokens: int, num_seqs: int, max_blocks: int) -> int | None:
        """Smallest token bucket that holds a prefill / mixed batch, or None (run eagerly)."""
        if max_blocks > self.width or num_seqs > self.rows:
            return None
        for t in self.token_buckets:
            if t >= num_tokens:
                return t
        return None

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
        meta = AttentionMetadata(
            slot_mapping=v["slot_mapping"],
            context_lens=v["context_lens"],
            block_tables=v["block_tables"],
            cu_seqlens_q=v["cu_seqlens_q"],
            max_seqlen_q=1,
            max_seqlen_k=self.max_model_len,
            is_decode=True,
        )
        return v["input_ids"], v["positions"], meta

    def mixed_meta(self, tokens: int) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        """input_ids, positions and mixed-batch metadata (shape-fixed grids) as views of the static buffers."""
        v = self.mixed_layout(tokens).views(self.buffers.b64, self.buffers.b32, self.buffers.bf)
        meta = AttentionMetadata(
            slot_mapping=v["slot_mapping"],
            context_lens=v["context_lens"],
            block_tables=v["block_tables"],
            cu_seqlens_q=v["cu_seqlens_q"],
            max_seqlen_q=tokens,
            max_seqlen_k=self.max_model_len,
            is_decode=False,
            graph_rows=self.rows,
            num_decode_dev=v["num_decode"],
        )
        return v["input_ids"], v["positions"], meta

    def key_meta(self, key: tuple[str, int]) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        kind, size = key
        return self.mixed_meta(size) if kind == "mixed" else self.meta(size)

    @torch.inference_mode()
    def capture(self, progress: Callable[[str, int, int, str], None] | None = None) -> None:
        """Capture every graph, largest first (mixed, then decode) so smaller graphs reuse its memory pool; then
        the sampling graphs, which read the decode graphs' outputs. progress hears ("cuda graphs", n, total)."""
        b64, b32 = self.buffers.b64, self.buffers.b32
        pool = None
        keys = [("mixed", t) for t in reversed(self.token_buckets)] + [("decode", b) for b in reversed(self.buckets)]
        total = len(keys) + (len(self.buckets) if self.sample is not None else 0)
        tick = progress or _no_progress
        tick("cuda graphs", 0, total, "graphs")
        for key in keys:
            ids, positions, meta = self.key_meta(key)
            # Inert inputs: nothing is written to the KV cache, no row has a query.
            b64.zero_()
            b32.zero_()
            meta.slot_mapping.fill_(-1)
            self.forward(ids, positions, meta)  # warm-up: Triton compiles, cuBLAS picks its kernels
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool):
                self.outputs[key] = self.forward(ids, positions, meta)
            if pool is None:
                pool = graph.pool()
            self.graphs[key] = graph
            tick("cuda graphs", len(self.graphs), total, "graphs")
        if self.sample is not None:
            for b in reversed(self.buckets):
                v = self.layout(b).views(self.buffers.b64, self.buffers.b32, self.buffers.bf)
                args = (self.outputs[("decode", b)], v["temperatures"], v["seeds"], v["offsets"])
                self.buffers.bf.zero_()  # greedy rows for the warm-up (compiles the sampler at this size)
                self.sample(*args)
                torch.cuda.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool):
                    self.outputs[("sample", b)] = self.sample(*args)
                self.graphs[("sample", b)] = graph
                tick("cuda graphs", len(self.graphs), total, "graphs")
        torch.cuda.synchronize()

    def can_sample(self, bucket: int) -> bool:
        return ("sample", bucket) in self.graphs

    def replay_sampled(self, bucket: int) -> torch.Tensor:
        """The decode graph of `bucket` rows, then its sampling graph: one token per row (padding rows too;
        -1 where the logits were not finite). The tokens tensor is the graph's: the next replay overwrites it."""
        self.graphs[("decode", bucket)].replay()
        self.graphs[("sample", bucket)].replay()
        self.num_replays += 1
        self.num_sampled_replays += 1
        return self.outputs[("sample", bucket)]

    def replay(self, bucket: int, mixed_tokens: int = 0) -> torch.Tensor:
        """Run a graph on whatever the static buffers hold now: the decode graph of `bucket` rows, or the
        mixed graph of `mixed_tokens` tokens; returns its hidden states [rows or tokens, H]."""
        key = ("mixed", mixed_tokens) if mixed_tokens else ("decode", bucket)
        self.graphs[key].replay()
        self.num_replays += 1
        return self.outputs[key]


def _no_progress(phase: str, done: int, total: int, unit: str) -> None:
    """The progress callback when nobody listens."""


def capture_graphs(
    model: LlamaForCausalLM,
    cfg: Config,
    device: torch.device,
    block_size: int,
    backend_name: str,
    progress: Callable[[str, int, int, str], None] | None = None,
) -> CUDAGraphRunner | None:
    """Decode graphs on CUDA with a capturable backend, unless enforce_eager; after the KV cache exists."""
    if cfg.enforce_eager or device.type != "cuda" or backend_name not in GRAPH_BACKENDS:
        return None
    mixed_tokens = cfg.max_num_batched_tokens if backend_name in MIXED_GRAPH_BACKENDS else 0
    graphs = CUDAGraphRunner(
        model,
        device,
        cfg.max_num_seqs,
        cfg.max_model_len,
        block_size,
        mixed_tokens,
        graph_sampler(model),
    )
    graphs.capture(progress)
    return graphs


def graph_sampler(model: LlamaForCausalLM) -> SampleFn | None:
    """What the sampling graphs capture: LM head + the fused sampler, exactly as execute + sample_device
    run them for a decode batch without top-k / top-p; None (no sampling graphs) where the fused sampler
    is unavailable, or with tensor parallelism (the LM head's gather would need every rank to replay)."""
    fused = fused_sampler()
    if fused is None or get_tp_size() > 1:
        return None

    def sample(
        hidden: torch.Tensor, temperatures: torch.Tensor, seeds: torch.Tensor, offsets: torch.Tensor
    ) -> torch.Tensor:
        return fused(model.compute_logits(hidden), temperatures, seeds, offsets)

    return sample
