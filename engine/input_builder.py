"""InputBuilder: a scheduled batch -> device tensors, through reused (pinned) host buffers and three non-blocking copies.

Host work per step is a handful of vectorised numpy operations over the whole batch, so a decode
step of 256 sequences costs tens of microseconds instead of one torch.tensor(...).pin_memory() per
tensor. All integer inputs travel in one int64 and one int32 staging buffer (plus a float32 one for
sampling parameters); the device tensors are views into the matching device buffers, laid out by
`Layout` so that CUDA graphs captured on a layout see the next step's data at the same addresses.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Protocol
from itertools import chain
from operator import attrgetter, getitem, itemgetter

import numpy as np
import torch

from engine.sequence import Sequence

_first, _second = itemgetter(0), itemgetter(1)
_computed, _token_ids, _block_table = attrgetter("num_computed_tokens"), attrgetter("token_ids"), attrgetter("block_table")
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


_ALIGN_BYTES = 16  # Triton specialises pointer arguments on 16-byte alignment: keep every view aligned


def _align(n: int, itemsize: int) -> int:
    step = _ALIGN_BYTES // itemsize
    return -(-n // step) * step


@dataclass(frozen=True)
class Layout:
    """Offsets of each input inside the int64 / int32 / float32 buffers, for rows x tokens x width x samples.

    Every view starts 16-byte aligned: an unaligned view (e.g. cu_seqlens_q after an odd token count)
    would make Triton compile a new kernel variant mid-run (~0.5 s stalls measured on an H200).
    """

    rows: int
    tokens: int
    width: int
    samples: int

    def _fields(self) -> tuple[tuple[tuple[str, int], ...], ...]:
        t, r, s, w = self.tokens, self.rows, self.samples, self.width
        # Fields a CUDA graph reads come first, so their offsets do not depend on the number of samples.
        return ((("input_ids", t), ("positions", t), ("slot_mapping", t), ("cu_seqlens_q", r + 1),
                 ("num_decode", 1), ("sample_rows", s), ("top_ks", s), ("seeds", s), ("offsets", s)),
                (("context_lens", r), ("block_tables", r * w)),
                (("temperatures", s), ("top_ps", s)))

    @functools.cached_property
    def _spans(self) -> tuple[dict[str, tuple[int, int]], tuple[int, int, int]]:
        spans, sizes = {}, []
        for fields, itemsize in zip(self._fields(), (8, 4, 4)):
            offset = 0
            for name, n in fields:
                spans[name] = (offset, offset + n)
                offset = _align(offset + n, itemsize)
            sizes.append(offset)
        return spans, tuple(sizes)

    @property
    def size64(self) -> int:
        return self._spans[1][0]

    @property
    def size32(self) -> int:
        return self._spans[1][1]

    @property
    def sizef(self) -> int:
        return self._spans[1][2]

    def views(self, b64: torch.Tensor, b32: torch.Tensor, bf: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named views of this layout into three flat buffers (host or device)."""
        spans = self._spans[0]
        out = {}
        for fields, buf in zip(self._fields(), (b64, b32, bf)):
            for name, _ in fields:
                lo, hi = spans[name]
                out[name] = buf[lo:hi]
        out["block_tables"] = out["block_tables"].reshape(self.rows, self.width)
        return out


class DeviceBuffers:
    """Three flat device buffers that a Layout's views point into."""

    def __init__(self, device: torch.device, size64: int, size32: int, sizef: int):
        # Normal tensors even when first built inside inference mode (the KV-sizing warm-up): later steps write them.
        with torch.inference_mode(False):
            self.b64 = torch.zeros(max(size64, 1), dtype=torch.int64, device=device)
            self.b32 = torch.zeros(max(size32, 1), dtype=torch.int32, device=device)
            self.bf = torch.zeros(max(sizef, 1), dtype=torch.float32, device=device)

    def fits(self, layout: Layout) -> bool:
        return layout.size64 <= self.b64.numel() and layout.size32 <= self.b32.numel() and layout.sizef <= self.bf.numel()


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


class InputBuilder:
    """Fills host staging buffers with numpy and copies them to device buffers (its own, or a CUDA graph's)."""

    def __init__(self, device: torch.device, block_size: int):
        self.device = device
        self.block_size = block_size
        self.pin = device.type == "cuda"
        self._host: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._own: DeviceBuffers | None = None
        # Set after each step's copies: the next step must not overwrite pinned memory still being read.
        self._copied: torch.cuda.Event | None = None
        self._host_np: tuple[np.ndarray, np.ndarray, np.ndarray] = ()
        self._view_cache: dict[tuple[Layout, int], dict[str, torch.Tensor]] = {}
        # Philox keys of unseeded rows: fresh every step, reproducible under torch.manual_seed like the torch path.
        self._rng = np.random.default_rng(torch.initial_seed())

    def _fresh_seed(self) -> int:
        return int(self._rng.integers(-2**63, 2**63 - 1, dtype=np.int64, endpoint=True))

    def _host_buffers(self, layout: Layout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self._host
        if h is None or layout.size64 > h[0].numel() or layout.size32 > h[1].numel() or layout.sizef > h[2].numel():
            # Grow geometrically so a long run settles on one allocation.
            old = (0, 0, 0) if h is None else tuple(x.numel() for x in h)
            sizes = [max(need, 2 * have) for need, have in zip((layout.size64, layout.size32, layout.sizef), old)]
            with torch.inference_mode(False):
                self._host = h = tuple(torch.zeros(max(n, 1), dtype=dt, pin_memory=self.pin)
                                       for n, dt in zip(sizes, (torch.int64, torch.int32, torch.float32)))
            self._host_np = tuple(x.numpy() for x in h)  # numpy slicing is far cheaper than torch slicing
        return h

    def _device_views(self, layout: Layout, dev: DeviceBuffers) -> dict[str, torch.Tensor]:
        """Views are cached per (layout, buffers): a decode run repeats the same few layouts every step."""
        key = (layout, id(dev.b64))
        views = self._view_cache.get(key)
        if views is None:
            if len(self._view_cache) > 1024:
                self._view_cache.clear()
            views = self._view_cache[key] = layout.views(dev.b64, dev.b32, dev.bf)
        return views

    def _device_buffers(self, layout: Layout) -> DeviceBuffers:
        if self._own is None or not self._own.fits(layout):
            old = self._own
            grow = (lambda n, t: max(n, 2 * t.numel())) if old else (lambda n, t: n)
            self._view_cache.clear()
            self._own = DeviceBuffers(self.device, grow(layout.size64, old and old.b64),
                                      grow(layout.size32, old and old.b32), grow(layout.sizef, old and old.bf))
        return self._own

    def build(self, items: list[tuple[Sequence, int]], graphs: GraphLayouts | None = None,
              ahead: bool = False) -> BuiltInputs:
        """Tensors for (sequence, num new tokens) pairs; a batch that a graph bucket holds is written
        straight into the graphs' static buffers in that bucket's layout (graph_bucket / graph_tokens > 0).

        ahead: a decode batch one token past each sequence's host state (its last token is still being
        sampled on the device): positions and slots move one on, and the input ids are left to the caller.
        """
        bs = self.block_size
        b = len(items)
        # Per-sequence scalars through C-level map/attrgetter loops: attribute reads dominate the host cost.
        seqs = list(map(_first, items))
        starts_l = list(map(_computed, seqs))
        tokens_l = list(map(_token_ids, seqs))
        tables_l = list(map(_block_table, seqs))
        ns = np.array(list(map(_second, items)), dtype=np.int64)
        starts = np.array(starts_l, dtype=np.int64) + ahead
        totals = np.array(list(map(len, tokens_l)), dtype=np.int64) + ahead
        lens = np.array(list(map(len, tables_l)), dtype=np.int64)
        ends = starts + ns
        num_tokens = int(ns.sum())
        done = ends == totals
        all_done = bool(done.all())
        samplers = seqs if all_done else [s for s, d in zip(seqs, done.tolist()) if d]
        max_blocks = int(lens.max())
        is_decode = num_tokens == b
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
            layout = Layout(bucket, bucket, graphs.width, len(samplers))  # decode graphs: one token per row
        else:
            layout = Layout(b, num_tokens, max_blocks, len(samplers))
        rows, tokens, w = layout.rows, layout.tokens, layout.width
        if self._copied is not None:
            self._copied.synchronize()  # usually long done: every sampled step already waited for its tokens
        h64, h32, hf = self._host_buffers(layout)
        a = layout.views(*self._host_np)

        # 1. Token-level inputs: which row each token belongs to, then positions, ids and cache slots.
        cu = a["cu_seqlens_q"]
        cu[0] = 0
        np.cumsum(ns, out=cu[1:b + 1])
        cu[b + 1:] = num_tokens
        if num_tokens == b:  # decode-shaped: one token per row, already read above
            row = np.arange(b)
            pos = starts
            ids = 0 if ahead else np.array(list(map(getitem, tokens_l, starts_l)), dtype=np.int64)
        else:
            row = np.repeat(np.arange(b), ns)
            pos = starts[row] + (np.arange(num_tokens) - cu[:b][row])
            ids = np.fromiter(chain.from_iterable(t[st:st + n] for t, st, n in zip(tokens_l, starts_l, ns.tolist())),
                              np.int64, num_tokens)
        tbl = a["block_tables"]
        tbl[:b] = -1
        tbl[:b][np.arange(w)[None, :] < lens[:, None]] = np.fromiter(
            chain.from_iterable(tables_l), np.int32, int(lens.sum()))
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
        a["sample_rows"][:] = cu[1:b + 1][done] - 1
        sps = list(map(_sampling_params, samplers))
        distinct = {id(p): p for p in sps}
        if len(distinct) == 1:  # one SamplingParams shared by the batch (LLM.generate): no per-row reads
            p = sps[0]
            temps = np.full(len(sps), p.temperature)
            top_ks = np.full(len(sps), p.top_k, dtype=np.int64)
            top_ps = np.full(len(sps), p.top_p)
        else:
            temps = np.array(list(map(_temperature, sps)), dtype=np.float64)
            top_ks = np.array(list(map(_top_k, sps)), dtype=np.int64)
            top_ps = np.array(list(map(_top_p, sps)), dtype=np.float64)
        a["temperatures"][:] = temps
        a["top_ks"][:] = top_ks
        a["top_ps"][:] = top_ps
        # Per-row Philox key and counter for the fused CUDA sampler: a seeded request samples with (its seed,
        # the position of the token being sampled), so its tokens depend on neither the batch nor preemption.
        a["offsets"][:] = totals[done]
        row_seeds = a["seeds"]
        user_seeds = [sps[0].seed] * len(sps) if len(distinct) == 1 else list(map(_seed, sps))
        if user_seeds.count(None) == len(user_seeds):  # the usual case: no seeded request in the batch
            row_seeds[:] = self._rng.integers(-2**63, 2**63 - 1, size=len(sps), dtype=np.int64, endpoint=True)
        else:
            row_seeds[:] = [self._fresh_seed() if s is None else _as_int64(s) for s in user_seeds]

        # 4. One non-blocking copy per buffer, then device views with the same layout.
        dev = target or self._device_buffers(layout)
        if target is not None and not target.fits(layout):
            raise ValueError(f"batch layout {layout} does not fit the CUDA-graph buffers")
        for host, buf, n in ((h64, dev.b64, layout.size64), (h32, dev.b32, layout.size32), (hf, dev.bf, layout.sizef)):
            if n:
                buf[:n].copy_(host[:n], non_blocking=self.pin)
        if self.pin:
            self._copied = torch.cuda.Event()
            self._copied.record()
        return BuiltInputs(
            tensors=self._device_views(layout, dev), layout=layout, graph_bucket=bucket or 0,
            graph_tokens=mixed or 0, num_decode_rows=num_decode, num_samples=len(samplers), num_rows=b,
            max_seqlen_q=int(ns.max()), max_seqlen_k=int(ends.max()), is_decode=is_decode,
            all_greedy=not temps.any(), use_top_k=bool((top_ks != -1).any()),
            use_top_p=bool((top_ps < 1).any()), samplers=samplers)
