"""StagingBuffers: the InputBuilder's reused (pinned) host buffers, its own device buffers, their per-layout views,
and the step's non-blocking copies between them.

All integer inputs travel in one int64 and one int32 staging buffer (plus a float32 one for sampling
parameters); the device tensors are views into the matching device buffers (the builder's own, or a CUDA
graph's static ones), laid out by `Layout`.
"""

from __future__ import annotations

from itertools import chain

import numpy as np
import torch

from nanovllm_tui.engine.execution.input_layout import DeviceBuffers, Layout

Copies = tuple[tuple[torch.Tensor, torch.Tensor], ...]  # (device slice, host slice) pairs of one step's copies
HostTensors = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
HostArrays = tuple[np.ndarray, np.ndarray, np.ndarray]

# Sampling fields and what a padding row of a decode graph's bucket holds: row 0, greedy, no top-k / top-p.
SAMPLE_PADDING = (
    ("sample_rows", 0),
    ("temperatures", 0.0),
    ("top_ks", -1),
    ("top_ps", 1.0),
    ("seeds", 0),
    ("offsets", 0),
)


class StagingBuffers:
    """Host staging buffers (numpy views for filling), device buffers, cached views, and the copies' event."""

    def __init__(self, device: torch.device):
        self.device = device
        self.pin = device.type == "cuda"
        # Where the copies go; passed to Event.record, whose own current-stream lookup costs more than the record.
        self.stream = torch.cuda.current_stream(device) if self.pin else None
        self._host: HostTensors | None = None
        self._host_np: HostArrays | None = None
        self._own: DeviceBuffers | None = None
        # Set after each step's copies: the next step must not overwrite pinned memory still being read.
        self._copied: torch.cuda.Event | None = None
        # Per layout (and device buffers): host views, device views and the three copies' slices. A decode
        # run repeats the same few layouts every step, and slicing costs more than the copies themselves.
        self._host_views: dict[Layout, dict[str, np.ndarray]] = {}
        self._view_cache: dict[tuple[Layout, int, int], tuple[dict[str, torch.Tensor], Copies]] = {}
        # (layout, block tables, their lengths) the host buffer holds from the last build: see fill_block_tables.
        self.last_tables: tuple[Layout, list[list[int]], np.ndarray] | None = None

    def wait_copied(self) -> None:
        """Wait until the last step's copies have read the host buffers (usually long done: every sampled
        step already waited for its tokens)."""
        if self._copied is not None:
            self._copied.synchronize()

    def host_views(self, layout: Layout) -> dict[str, np.ndarray]:
        """Named numpy views of the host buffers in `layout` (grown first if they are too small)."""
        host_np = self._host_buffers(layout)
        views = self._host_views.get(layout)
        if views is None:
            if len(self._host_views) > 1024:
                self._host_views.clear()
            views = self._host_views[layout] = layout.views(*host_np)
        return views

    def _host_buffers(self, layout: Layout) -> HostArrays:
        h, h_np = self._host, self._host_np
        if (
            h is None
            or h_np is None
            or layout.size64 > h[0].numel()
            or layout.size32 > h[1].numel()
            or layout.sizef > h[2].numel()
        ):
            # Grow geometrically so a long run settles on one allocation.
            old = (0, 0, 0) if h is None else tuple(x.numel() for x in h)
            sizes = [max(need, 2 * have) for need, have in zip((layout.size64, layout.size32, layout.sizef), old)]
            with torch.inference_mode(False):
                b64, b32, bf = (
                    torch.zeros(max(n, 1), dtype=dt, pin_memory=self.pin)
                    for n, dt in zip(sizes, (torch.int64, torch.int32, torch.float32))
                )
            self._host = (b64, b32, bf)
            # numpy slicing is far cheaper than torch slicing
            self._host_np = h_np = (b64.numpy(), b32.numpy(), bf.numpy())
            self._host_views.clear()
            self._view_cache.clear()
            self.last_tables = None
        return h_np

    def device_views(self, layout: Layout, dev: DeviceBuffers, samples: int) -> tuple[dict[str, torch.Tensor], Copies]:
        """Device views of a layout (sampling fields cut to `samples` rows), and the (device, host) slice pairs
        its step copies, cached per buffers."""
        key = (layout, id(dev.b64), samples)
        cached = self._view_cache.get(key)
        if cached is None:
            if len(self._view_cache) > 1024:
                self._view_cache.clear()
            host = self._host
            if host is None:
                raise RuntimeError("device views of a layout whose host views were never made")
            copies = tuple(
                (buf[:n], src[:n])
                for src, buf, n in zip(host, (dev.b64, dev.b32, dev.bf), (layout.size64, layout.size32, layout.sizef))
                if n
            )
            views = layout.views(dev.b64, dev.b32, dev.bf)
            if samples < layout.samples:
                views.update((name, views[name][:samples]) for name, _ in SAMPLE_PADDING)
            cached = self._view_cache[key] = views, copies
        return cached

    def own_buffers(self, layout: Layout) -> DeviceBuffers:
        """The builder's own device buffers (for batches no graph holds), grown to fit `layout`."""
        if self._own is None or not self._own.fits(layout):
            old = self._own
            self._view_cache.clear()
            if old is None:
                self._own = DeviceBuffers(self.device, layout.size64, layout.size32, layout.sizef)
            else:
                self._own = DeviceBuffers(
                    self.device,
                    max(layout.size64, 2 * old.b64.numel()),
                    max(layout.size32, 2 * old.b32.numel()),
                    max(layout.sizef, 2 * old.bf.numel()),
                )
        return self._own

    def fill_block_tables(self, tbl: np.ndarray, layout: Layout, tables: list[list[int]], lens: np.ndarray) -> None:
        """Write each row's block table padded with -1, skipping rows the previous build already wrote.

        A block table only grows by appends (BlockManager); freeing assigns a new list. So if the previous
        build had this layout and the same tables (the same lists, or equal ones), only rows that grew since
        differ from what the host buffer holds: in a decode run, the few rows that crossed a block boundary.
        """
        b, w = len(tables), layout.width
        last, self.last_tables = self.last_tables, None  # stays None if this write fails part-way
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
        self.last_tables = (layout, tables, lens)

    def copy(self, copies: Copies) -> None:
        """The step's non-blocking host-to-device copies, and the event the next build waits on before it
        overwrites the pinned host buffers."""
        for buf, host in copies:
            buf.copy_(host, non_blocking=self.pin)
        if self.pin:
            self._copied = torch.cuda.Event()
            self._copied.record(self.stream)
