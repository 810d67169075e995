"""InputBuilder: a scheduled batch -> device tensors, through reused (pinned) host buffers and three non-blocking copies.

Host work per step is a handful of vectorised numpy operations over the whole batch, so a decode
step of 256 sequences costs tens of microseconds instead of one torch.tensor(...).pin_memory() per
tensor. The buffers and copies are StagingBuffers' (input_staging.py), the batch's numbers and layout
input_batch.py's, the fill steps input_fill.py's; CUDA graphs captured on a layout see the next step's
data at the same addresses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nanovllm_tui.engine.execution.input_batch import GraphLayouts, HostBatch, choose_layout, read_batch
from nanovllm_tui.engine.execution.input_fill import (
    as_int64,
    fill_padding,
    fill_sample_rows,
    fill_sampling_params,
    fill_tokens,
)
from nanovllm_tui.engine.execution.input_layout import DeviceBuffers, Layout
from nanovllm_tui.engine.execution.input_staging import Copies, StagingBuffers
from nanovllm_tui.engine.scheduling.sequence import Sequence

_SIGN_BIT = np.uint64(1 << 63)


@dataclass
class BuiltInputs:
    """One step's device tensors plus what the host already knows about them (no device reads needed)."""

    tensors: dict[str, torch.Tensor]
    layout: Layout
    graph_bucket: int  # > 0: the inputs sit in the graphs' static buffers, padded to this many rows
    graph_tokens: int  # > 0: a mixed batch in the graphs' buffers, padded to this many tokens
    num_decode_rows: int  # leading rows with one query each
    num_samples: int
    num_rows: int  # real sequences (rows past it are padding)
    max_seqlen_q: int
    max_seqlen_k: int
    is_decode: bool
    all_greedy: bool
    use_top_k: bool
    use_top_p: bool
    samplers: list[Sequence]


@dataclass
class _Repeat:
    """A decode build that _build_next can move one token on: its batch, where it went, and what it made."""

    items: list[tuple[Sequence, int]]
    graphs: GraphLayouts | None
    host: dict[str, np.ndarray]
    copies: Copies
    built: BuiltInputs


class InputBuilder:
    """Fills host staging buffers with numpy and copies them to device buffers (its own, or a CUDA graph's)."""

    def __init__(self, device: torch.device, block_size: int):
        self.device = device
        self.block_size = block_size
        self.staging = StagingBuffers(device)
        self.pin = self.staging.pin
        self.stream = self.staging.stream  # where the step's copies run (the runner records its events there)
        # The last decode build, if the same batch may come again one token further (see _build_next).
        self._repeat: _Repeat | None = None
        # Philox keys of unseeded rows: fresh every step, reproducible under torch.manual_seed like the torch path.
        self._rng = np.random.default_rng(torch.initial_seed())

    def _fresh_seeds(self, n: int) -> np.ndarray:
        """n uniform int64 keys: rng.integers(-2**63, 2**63 - 1, n, int64, endpoint=True)'s exact values, at
        a fraction of its cost (the full range is one raw 64-bit draw each, offset by -2**63)."""
        return (self._rng.bit_generator.random_raw(n) ^ _SIGN_BIT).view(np.int64)

    def _fresh_seed(self) -> int:
        return int(self._fresh_seeds(1)[0])

    def build(
        self, items: list[tuple[Sequence, int]], graphs: GraphLayouts | None = None, ahead: bool = False
    ) -> BuiltInputs:
        """Tensors for (sequence, num new tokens) pairs; a batch that a graph bucket holds is written
        straight into the graphs' static buffers in that bucket's layout (graph_bucket / graph_tokens > 0).

        ahead: a decode batch one token past each sequence's host state (its last token is still being
        sampled on the device): positions and slots move one on, and the input ids are left to the caller.
        """
        last, self._repeat = self._repeat, None  # stays None unless this build can be repeated
        if ahead and last is not None and last.items is items and last.graphs is graphs:
            built = self._build_next(last)
            if built is not None:
                return built
        batch = read_batch(items, ahead)
        bucket, mixed, layout, target = choose_layout(batch, graphs)
        self.staging.wait_copied()
        a = self.staging.host_views(layout)
        # 1. Token-level inputs; 2. padded rows and tokens; 3. sampling rows and parameters (on the host).
        fill_tokens(a, layout, batch, ahead, self.block_size, self.staging)
        fill_padding(a, layout, batch)
        fill_sample_rows(a, layout, batch)
        all_greedy, use_top_k, use_top_p, user_seeds = fill_sampling_params(a, batch.samplers)
        self._fill_seeds(a["seeds"][: len(batch.samplers)], user_seeds)
        # 4. One non-blocking copy per buffer, then device views with the same layout.
        copies, built = self._copy_out(batch, layout, target, bucket, mixed, (all_greedy, use_top_k, use_top_p))
        if batch.is_decode and batch.all_done and user_seeds is None:
            self._repeat = _Repeat(items, graphs, a, copies, built)  # built.samplers is the batch's sequences
        return built

    def _fill_seeds(self, row_seeds: np.ndarray, user_seeds: list[int | None] | None) -> None:
        """Per-row Philox keys for the fused CUDA sampler: a seeded request samples with (its seed, the position
        of the token being sampled), so its tokens depend on neither the batch nor preemption."""
        if user_seeds is None:  # the usual case: no seeded request in the batch
            row_seeds[:] = self._fresh_seeds(len(row_seeds))
        else:
            row_seeds[:] = [self._fresh_seed() if s is None else as_int64(s) for s in user_seeds]

    def _copy_out(
        self,
        batch: HostBatch,
        layout: Layout,
        target: DeviceBuffers | None,
        bucket: int,
        mixed: int,
        flags: tuple[bool, bool, bool],
    ) -> tuple[Copies, BuiltInputs]:
        """Copy the host buffers to the device (the graphs' buffers, or the builder's own) and describe them."""
        dev = target or self.staging.own_buffers(layout)
        if target is not None and not target.fits(layout):
            raise ValueError(f"batch layout {layout} does not fit the CUDA-graph buffers")
        num_samples = len(batch.samplers)
        views, copies = self.staging.device_views(layout, dev, num_samples)
        self.staging.copy(copies)
        ns = batch.ns
        built = BuiltInputs(
            tensors=views,
            layout=layout,
            graph_bucket=bucket,
            graph_tokens=mixed,
            num_decode_rows=batch.num_decode,
            num_samples=num_samples,
            num_rows=batch.num_rows,
            max_seqlen_q=1 if ns is None else int(ns.max()),
            max_seqlen_k=int(batch.ends.max()),
            is_decode=ns is None,
            all_greedy=flags[0],
            use_top_k=flags[1],
            use_top_p=flags[2],
            samplers=batch.samplers,
        )
        return copies, built

    def _build_next(self, r: _Repeat) -> BuiltInputs | None:
        """The last decode batch (the same list) again, one token further on: the pipelined decode run's step.

        Every row moved on by exactly one token since (the list comes back from Scheduler.schedule_ahead only
        then), so positions, context lengths and sample offsets add one in place in the host buffers, the slots
        follow the positions, and only rows that entered a new block re-read their block table. Sampling
        parameters and rows are as they were; unseeded rows draw fresh keys. None if the layout must change.
        """
        a, bs, last = r.host, self.block_size, r.built
        b = last.num_rows
        tables = self.staging.last_tables
        if tables is None or tables[0] != last.layout:
            return None
        known = tables[2]  # each row's table length as written in the host buffer
        self.staging.wait_copied()  # the last step's copies read these host buffers
        pos = a["positions"][:b]
        pos += 1
        tbl = a["block_tables"]
        grew = np.flatnonzero(pos // bs >= known).tolist()
        if grew:
            width = last.layout.width
            for i in grew:
                row = last.samplers[i].block_table  # every row samples: the batch's sequences
                if len(row) > width:  # an eager layout sized to the longest table: build afresh
                    self.staging.last_tables = None
                    return None
                tbl[i, : len(row)] = row
                tbl[i, len(row) :] = -1
                known[i] = len(row)
        a["slot_mapping"][:b] = tbl[a["cu_seqlens_q"][:b], pos // bs].astype(np.int64) * bs + pos % bs
        a["context_lens"][:b] += 1
        a["offsets"][:b] += 1
        a["seeds"][:b] = self._fresh_seeds(b)
        self.staging.copy(r.copies)
        built = BuiltInputs(
            tensors=last.tensors,
            layout=last.layout,
            graph_bucket=last.graph_bucket,
            graph_tokens=0,
            num_decode_rows=b,
            num_samples=b,
            num_rows=b,
            max_seqlen_q=1,
            max_seqlen_k=last.max_seqlen_k + 1,
            is_decode=True,
            all_greedy=last.all_greedy,
            use_top_k=last.use_top_k,
            use_top_p=last.use_top_p,
            samplers=last.samplers,
        )
        r.built = built
        self._repeat = r
        return built
