"""Where a step's inputs live: `Layout` (offsets of each input in three flat int64 / int32 / float32 buffers)
and `DeviceBuffers` (those buffers on the device). CUDA graphs capture views of one layout, so the next step's
data must land at the same addresses; InputBuilder (nanovllm_tui/engine/execution/input_builder.py) fills them."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

Buf = TypeVar("Buf", torch.Tensor, np.ndarray)  # host buffers are numpy views, device ones tensors
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
        return (
            (
                ("input_ids", t),
                ("positions", t),
                ("slot_mapping", t),
                ("cu_seqlens_q", r + 1),
                ("num_decode", 1),
                ("sample_rows", s),
                ("top_ks", s),
                ("seeds", s),
                ("offsets", s),
            ),
            (("context_lens", r), ("block_tables", r * w)),
            (("temperatures", s), ("top_ps", s)),
        )

    @functools.cached_property
    def _spans(self) -> tuple[dict[str, tuple[int, int]], tuple[int, int, int]]:
        return _layout_spans(self)

    @property
    def size64(self) -> int:
        return self._spans[1][0]

    @property
    def size32(self) -> int:
        return self._spans[1][1]

    @property
    def sizef(self) -> int:
        return self._spans[1][2]

    def views(self, b64: Buf, b32: Buf, bf: Buf) -> dict[str, Buf]:
        """Named views of this layout into three flat buffers (host or device)."""
        spans = self._spans[0]
        out: dict[str, Buf] = {}
        for fields, buf in zip(self._fields(), (b64, b32, bf)):
            for name, _ in fields:
                lo, hi = spans[name]
                out[name] = buf[lo:hi]
        out["block_tables"] = out["block_tables"].reshape(self.rows, self.width)
        return out


@functools.lru_cache(maxsize=1024)
def _layout_spans(layout: Layout) -> tuple[dict[str, tuple[int, int]], tuple[int, int, int]]:
    """Offsets per field and buffer sizes, cached by shape: builders make a fresh Layout every step."""
    spans: dict[str, tuple[int, int]] = {}
    sizes = [0, 0, 0]
    for i, (fields, itemsize) in enumerate(zip(layout._fields(), (8, 4, 4))):
        offset = 0
        for name, n in fields:
            spans[name] = (offset, offset + n)
            offset = _align(offset + n, itemsize)
        sizes[i] = offset
    return spans, (sizes[0], sizes[1], sizes[2])


class DeviceBuffers:
    """Three flat device buffers that a Layout's views point into."""

    def __init__(self, device: torch.device, size64: int, size32: int, sizef: int):
        # Normal tensors even when first built inside inference mode (the KV-sizing warm-up): later steps write them.
        with torch.inference_mode(False):
            self.b64 = torch.zeros(max(size64, 1), dtype=torch.int64, device=device)
            self.b32 = torch.zeros(max(size32, 1), dtype=torch.int32, device=device)
            self.bf = torch.zeros(max(sizef, 1), dtype=torch.float32, device=device)

    def fits(self, layout: Layout) -> bool:
        return (
            layout.size64 <= self.b64.numel() and layout.size32 <= self.b32.numel() and layout.sizef <= self.bf.numel()
        )
