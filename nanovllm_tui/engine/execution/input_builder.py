"""InputBuilder: a scheduled batch -> device tensors, through reused (pinned) host buffers and three non-blocking copies.

Host work per step is a handful of vectorised numpy operations over the whole batch, so a decode
step of 256 sequences costs tens of microseconds instead of one torch.tensor(...).pin_memory() per
tensor. All integer inputs travel in one int64 and one int32 staging buffer (plus a float32 one for
sampling parameters); the device tensors are views into the matching device buffers, laid out by
`Layout` so that CUDA graphs captured on a layout see the next step's data at the same addresses.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain, compress, repeat
from operator import attrgetter, getitem, is_, itemgetter
from typing import Protocol

import numpy as np
import torch

from nanovllm_tui.engine.execution.input_layout import DeviceBuffers, Layout
from nanovllm_tui.engine.scheduling.sequence import Sequence

_first, _second = itemgetter(0), itemgetter(1)
_computed, _token_ids, _block_table = (
    attrgetter("num_computed_tokens"),
    attrgetter("token_ids"),
    attrgetter("block_table"),
)
_sampling_params, _temperature = attrgetter("sampling_params"), attrgetter("temperature")
_top_k, _top_p, _seed = attrgetter("top_k"), attrgetter("top_p"), attrgetter("seed")


def _as_int64(seed: int) -> int:
    """A seed's low 64 bits (as Sequence.generator uses them) as a signed int64 value."""
    return ((seed & 0xFFFF_FFFF_FFFF_FFFF) ^ (1 << 63)) - (1 << 63)


class GraphLayouts(Protocol):
    """What the builder needs from a CUDA-graph runner: its buckets, block-table width and static buffers."""

    width: int
    buffers: DeviceBuffers

    def bucket_for(self, num_seqs: int, max_blocks: int) -> int | None: ...

    def mixed_bucket_for(self, num_tokens: int, num_seqs: int, max_blocks: int) -> int | None: ...

    def mixed_layout(self, tokens: int, samples: int) -> Layout: ...

    def layout(self, bucket: int) -> Layout: ...


_SIGN_BIT = np.uint64(1 << 63)
# Sampling fields and what a padding row of a decode graph's bucket holds: row 0, greedy, no top-k / top-p.
_SAMPLE_PADDING = (
    ("sample_rows", 0),
    ("temperatures", 0.0),
    ("top_ks", -1),
    ("top_ps", 1.0),
    ("seeds", 0),
    ("offsets", 0),
)


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


_Copies = tuple[tuple[torch.Tensor, torch.Tensor], ...]


@dataclass
class _Repeat:
    """A decode build that _build_next can move one token on: its batch, where it went, and what it made."""

    items: list[tuple[Sequence, int]]
    graphs: GraphLayouts | None
    host: dict[str, np.ndarray]
    copies: _Copies
    built: BuiltInputs


class InputBuilder:
    """Fills host staging buffers with numpy and copies them to device buffers (its own, or a CUDA graph's)."""

    def __init__(self, device: torch.device, block_size: int):
        self.device = device
        self.block_size = block_size
        self.pin = device.type == "cuda"
        # Where the copies go; passed to Event.record, whose own current-stream lookup costs more than the record.
        self.stream = torch.cuda.current_stream(device) if self.pin else None
        self._host: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._own: DeviceBuffers | None = None
        # Set after each step's copies: the next step must not overwrite pinned memory still being read.
        self._copied: torch.cuda.Event | None = None
        self._host_np: tuple[np.ndarray, np.ndarray, np.ndarray] = ()
        # Per layout (and device buffers): host views, device views and the three copies' slices. A decode
        # run repeats the same few layouts every step, and slicing costs more than the copies themselves.
        self._host_views: dict[Layout, dict[str, np.ndarray]] = {}
        self._view_cache: dict[tuple[Layout, int], tuple[dict[str, torch.Tensor], _Copies]] = {}
        # (layout, block tables, their lengths) the host buffer holds from the last build: see _fill_block_tables.
        self._last_tables: tuple[Layout, list[list[int]], np.ndarray] | None = None
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

    def _host_buffers(self, layout: Layout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self._host
        if h is None or layout.size64 > h[0].numel() or layout.size32 > h[1].numel() or layout.sizef > h[2].numel():
            # Grow geometrically so a long run settles on one allocation.
            old = (0, 0, 0) if h is None else tuple(x.numel() for x in h)
            sizes = [max(need, 2 * have) for need, have in zip((layout.size64, layout.size32, layout.sizef), old)]
            with torch.inference_mode(False):
                self._host = h = tuple(
                    torch.zeros(max(n, 1), dtype=dt, pin_memory=self.pin)
                    for n, dt in zip(sizes, (torch.int64, torch.int32, torch.float32))
                )
            self._host_np = tuple(x.numpy() for x in h)  # numpy slicing is far cheaper than torch slicing
            self._host_views.clear()
            self._view_cache.clear()
            self._last_tables = None
        return h

    def _host_layout_views(self, layout: Layout) -> dict[str, np.ndarray]:
        views = self._host_views.get(layout)
        if views is None:
            if len(self._host_views) > 1024:
                self._host_views.clear()
            views = self._host_views[layout] = layout.views(*self._host_np)
        return views

    def _device_views(
        self, layout: Layout, dev: DeviceBuffers, samples: int
    ) -> tuple[dict[str, torch.Tensor], _Copies]:
        """Device views of a layout (sampling fields cut to `samples` rows), and the (device, host) slice pairs
        its step copies, cached per buffers."""
        key = (layout, id(dev.b64), samples)
        cached = self._view_cache.get(key)
        if cached is None:
            if len(self._view_cache) > 1024:
                self._view_cache.clear()
            copies = tuple(
                (buf[:n], host[:n])
                for host, buf, n in zip(
                    self._host, (dev.b64, dev.b32, dev.bf), (layout.size64, layout.size32, layout.sizef)
                )
                if n
            )
            views = layout.views(dev.b64, dev.b32, dev.bf)
            if samples < layout.samples:
                views.update((name, views[name][:samples]) for name, _ in _SAMPLE_PADDING)
            cached = self._view_cache[key] = views, copies
        return cached

    def _fill_block_tables(self, tbl: np.ndarray, layout: Layout, tables: list[list[int]], lens: np.ndarray) -> None:
        """Write each row's block table padded with -1, skipping rows the previous build already wrote.

        A block table only grows by appends (BlockManager); freeing assigns a new list. So if the previous
        build had this layout and the same tables (the same lists, or equal ones), only rows that grew since
        differ from what the host buffer holds: in a decode run, the few rows that crossed a block boundary.
        """
        b, w = len(tables), layout.width
        last, self._last_tables = self._last_tables, None  # stays None if this write fails part-way
        if last is not None and last[0] == layout and last[1] == tables:
            for i in np.flatnonzero(lens != last[2]).tolist():
                row = tables[i]
                tbl[i, : len(row)] = row
                tbl[i, len(row) :] = -1
        else:
            flat = np.fromiter(chain.from_iterable(tables), np.int32, int(lens.sum()))
            if int(lens.min()) == w:  # every table fills its row: no padding to write
                tbl[:b] = flat.reshape(b, w)
            else:
                tbl[:b] = -1
                tbl[:b][np.arange(w) < lens[:, None]] = flat
        self._last_tables = (layout, tables, lens)

    def _device_buffers(self, layout: Layout) -> DeviceBuffers:
        if self._own is None or not self._own.fits(layout):
            old = self._own
            grow = (lambda n, t: max(n, 2 * t.numel())) if old else (lambda n, t: n)
            self._view_cache.clear()
            self._own = DeviceBuffers(
                self.device,
                grow(layout.size64, old and old.b64),
                grow(layout.size32, old and old.b32),
                grow(layout.sizef, old and old.bf),
            )
        return self._own

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
        bs = self.block_size
        b = len(items)
        # Per-sequence scalars through C-level map/attrgetter loops: attribute reads dominate the host cost.
        seqs = list(map(_first, items))
        ns_l = list(map(_second, items))
        starts_l = list(map(_computed, seqs))
        tokens_l = list(map(_token_ids, seqs))
        tables_l = list(map(_block_table, seqs))
        lens = np.fromiter(map(len, tables_l), np.int64, b)
        num_tokens = sum(ns_l)
        is_decode = num_tokens == b  # every row computes >= 1 token, so this is one token per row
        starts = np.fromiter(starts_l, np.int64, b)
        totals = np.fromiter(map(len, tokens_l), np.int64, b)
        if ahead:
            starts += 1
            totals += 1
        ns = None if is_decode else np.fromiter(ns_l, np.int64, b)
        ends = starts + 1 if is_decode else starts + ns
        done = ends == totals
        all_done = bool(done.all())
        samplers = seqs if all_done else list(compress(seqs, done.tolist()))
        max_blocks = int(lens.max())
        num_decode = b if is_decode else int(np.argmax(ns != 1))  # the runner puts one-query rows first
        bucket = mixed = None
        if graphs is not None:
            if is_decode:
                bucket = graphs.bucket_for(b, max_blocks)
            else:
                mixed = graphs.mixed_bucket_for(num_tokens, b, max_blocks)
        target = graphs.buffers if bucket or mixed else None
        if mixed:
            layout = graphs.mixed_layout(mixed, len(samplers))
        elif bucket:
            # Decode graphs: one token per row, and sampling fields for every row of the bucket at the addresses
            # the sampling graphs captured (rows past the sampled ones are padding).
            layout = graphs.layout(bucket)
        else:
            layout = Layout(b, num_tokens, max_blocks, len(samplers))
        rows, tokens = layout.rows, layout.tokens
        if self._copied is not None:
            self._copied.synchronize()  # usually long done: every sampled step already waited for its tokens
        self._host_buffers(layout)
        a = self._host_layout_views(layout)

        # 1. Token-level inputs: which row each token belongs to, then positions, ids and cache slots.
        cu = a["cu_seqlens_q"]
        if is_decode:  # one token per row: the ids were read above, and row i's token is token i
            cu[: b + 1] = np.arange(b + 1)
            row = cu[:b]
            pos = starts
            ids = 0 if ahead else np.fromiter(map(getitem, tokens_l, starts_l), np.int64, b)
        else:
            cu[0] = 0
            ns.cumsum(out=cu[1 : b + 1])
            row = np.repeat(np.arange(b), ns)
            pos = starts[row] + (np.arange(num_tokens) - cu[:b][row])
            ids = np.fromiter(
                chain.from_iterable(t[st : st + n] for t, st, n in zip(tokens_l, starts_l, ns_l)), np.int64, num_tokens
            )
        cu[b + 1 :] = num_tokens
        tbl = a["block_tables"]
        self._fill_block_tables(tbl, layout, tables_l, lens)
        a["input_ids"][:num_tokens] = ids
        a["positions"][:num_tokens] = pos
        a["slot_mapping"][:num_tokens] = tbl[row, pos // bs].astype(np.int64) * bs + pos % bs
        a["context_lens"][:b] = ends
        a["num_decode"][0] = num_decode
        # 2. Padded rows and tokens (CUDA graphs): slot -1 writes nothing, context 0 reads nothing.
        if tokens > num_tokens:
            a["input_ids"][num_tokens:] = 0
            a["positions"][num_tokens:] = 0
            a["slot_mapping"][num_tokens:] = -1
        if rows > b:
            a["context_lens"][b:] = 0
        # 3. Sampling rows and parameters; greediness is decided here, on the host.
        num_samples = len(samplers)
        if layout.samples > num_samples:  # padding rows of a decode graph's bucket: greedy, never read back
            for name, pad in _SAMPLE_PADDING:
                a[name][num_samples:] = pad
        if all_done:
            a["sample_rows"][:num_samples] = cu[1 : b + 1] - 1
            a["offsets"][:num_samples] = totals
        else:
            a["sample_rows"][:num_samples] = cu[1 : b + 1][done] - 1
            a["offsets"][:num_samples] = totals[done]
        sps = list(map(_sampling_params, samplers))
        p = sps[0] if sps else None
        temps, top_ks, top_ps = a["temperatures"][:num_samples], a["top_ks"][:num_samples], a["top_ps"][:num_samples]
        if p is not None and all(map(is_, sps, repeat(p))):
            # One SamplingParams shared by the batch (LLM.generate): no per-row reads.
            temps[:] = p.temperature
            top_ks[:] = p.top_k
            top_ps[:] = p.top_p
            all_greedy, use_top_k, use_top_p = p.temperature == 0, p.top_k != -1, p.top_p < 1
            user_seeds = None if p.seed is None else [p.seed] * len(sps)
        else:
            temps[:] = temps_l = list(map(_temperature, sps))
            top_ks[:] = top_ks_l = list(map(_top_k, sps))
            top_ps[:] = top_ps_l = list(map(_top_p, sps))
            # Decided on the exact values, not on their float32 copies.
            all_greedy = not any(temps_l)
            use_top_k, use_top_p = top_ks_l.count(-1) != len(top_ks_l), bool(sps) and min(top_ps_l) < 1
            user_seeds = list(map(_seed, sps))
            if user_seeds.count(None) == len(user_seeds):
                user_seeds = None
        # Per-row Philox key and counter for the fused CUDA sampler: a seeded request samples with (its seed,
        # the position of the token being sampled), so its tokens depend on neither the batch nor preemption.
        row_seeds = a["seeds"][:num_samples]
        if user_seeds is None:  # the usual case: no seeded request in the batch
            row_seeds[:] = self._fresh_seeds(len(sps))
        else:
            row_seeds[:] = [self._fresh_seed() if s is None else _as_int64(s) for s in user_seeds]

        # 4. One non-blocking copy per buffer, then device views with the same layout.
        dev = target or self._device_buffers(layout)
        if target is not None and not target.fits(layout):
            raise ValueError(f"batch layout {layout} does not fit the CUDA-graph buffers")
        views, copies = self._device_views(layout, dev, num_samples)
        self._copy(copies)
        built = BuiltInputs(
            tensors=views,
            layout=layout,
            graph_bucket=bucket or 0,
            graph_tokens=mixed or 0,
            num_decode_rows=num_decode,
            num_samples=len(samplers),
            num_rows=b,
            max_seqlen_q=1 if is_decode else int(ns.max()),
            max_seqlen_k=int(ends.max()),
            is_decode=is_decode,
            all_greedy=bool(all_greedy),
            use_top_k=bool(use_top_k),
            use_top_p=bool(use_top_p),
            samplers=samplers,
        )
        if is_decode and all_done and user_seeds is None:
            self._repeat = _Repeat(items, graphs, a, copies, built)  # built.samplers is seqs
        return built

    def _copy(self, copies: _Copies) -> None:
        """The step's non-blocking host-to-device copies, and the event the next build waits on before it
        overwrites the pinned host buffers."""
        for buf, host in copies:
            buf.copy_(host, non_blocking=self.pin)
        if self.pin:
            self._copied = torch.cuda.Event()
            self._copied.record(self.stream)

    def _build_next(self, r: _Repeat) -> BuiltInputs | None:
        """The last decode batch (the same list) again, one token further on: the pipelined decode run's step.

        Every row moved on by exactly one token since (the list comes back from Scheduler.schedule_ahead only
        then), so positions, context lengths and sample offsets add one in place in the host buffers, the slots
        follow the positions, and only rows that entered a new block re-read their block table. Sampling
        parameters and rows are as they were; unseeded rows draw fresh keys. None if the layout must change.
        """
        a, bs, last = r.host, self.block_size, r.built
        b = last.num_rows
        tables = self._last_tables
        if tables is None or tables[0] != last.layout:
            return None
        known = tables[2]  # each row's table length as written in the host buffer
        if self._copied is not None:
            self._copied.synchronize()  # the last step's copies read these host buffers
        pos = a["positions"][:b]
        pos += 1
        tbl = a["block_tables"]
        grew = np.flatnonzero(pos // bs >= known).tolist()
        if grew:
            width = last.layout.width
            for i in grew:
                row = last.samplers[i].block_table  # every row samples: the batch's sequences
                if len(row) > width:  # an eager layout sized to the longest table: build afresh
                    self._last_tables = None
                    return None
                tbl[i, : len(row)] = row
                tbl[i, len(row) :] = -1
                known[i] = len(row)
        a["slot_mapping"][:b] = tbl[a["cu_seqlens_q"][:b], pos // bs].astype(np.int64) * bs + pos % bs
        a["context_lens"][:b] += 1
        a["offsets"][:b] += 1
        a["seeds"][:b] = self._fresh_seeds(b)
        self._copy(r.copies)
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
