"""StepChannel: rank 0 hands each step's StepInputs to the tensor-parallel workers.

Control (a command and a small pickled header) always travels through one shared-memory block and one
semaphore per worker (nano-vllm uses events, but a multiprocessing.Event's set() blocks forever once a
waiting worker was killed; a semaphore release never blocks), so an idle worker waits on its semaphore
with no collective (and no collective timeout).
The tensors travel through the same shared memory on CPU, or as one torch.distributed broadcast from
GPU memory on CUDA, which avoids copying device tensors back to the host. benchmarks/tp_step_bench.py
measures both data paths.
"""

from __future__ import annotations

import contextlib
import pickle
import struct
from dataclasses import fields, is_dataclass
from multiprocessing import shared_memory
from multiprocessing.context import BaseContext
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

HEADER_BYTES = 1 << 16
# Rank 0 samples alone: workers never receive these.
SAMPLING_ONLY = frozenset({"temperatures", "top_ks", "top_ps", "generators", "seeds", "offsets"})
EXIT = "exit"
ALIGN = 16  # every tensor starts on an aligned byte offset so a uint8 view can be re-viewed as any dtype


def _flatten(obj: Any, tensors: list[torch.Tensor], offset: list[int]) -> tuple:
    """A picklable spec of a dataclass tree; tensors are replaced by (dtype, shape, byte offset) and collected."""
    spec = []
    for f in fields(obj):
        value = getattr(obj, f.name)
        if f.name in SAMPLING_ONLY:
            continue
        if isinstance(value, torch.Tensor):
            flat = value.contiguous().reshape(-1).view(torch.uint8)
            spec.append((f.name, "t", (value.dtype, tuple(value.shape), offset[0])))
            tensors.append(flat)
            offset[0] += -(-flat.numel() // ALIGN) * ALIGN
        elif is_dataclass(value):
            spec.append((f.name, "d", _flatten(value, tensors, offset)))
        else:
            spec.append((f.name, "v", value))
    return type(obj), tuple(spec)


def _unflatten(spec: tuple, data: torch.Tensor) -> Any:
    cls, items = spec
    kwargs: dict[str, Any] = {f.name: None for f in fields(cls) if f.name in SAMPLING_ONLY}
    for name, kind, info in items:
        if kind == "t":
            dtype, shape, off = info
            numel = 1
            for s in shape:
                numel *= s
            kwargs[name] = data[off : off + numel * dtype.itemsize].view(dtype).view(shape)
        elif kind == "d":
            kwargs[name] = _unflatten(info, data)
        else:
            kwargs[name] = info
    return cls(**kwargs)


class StepChannel:
    """One shared-memory block: [header length | pickled header | per-rank memory bytes | tensor data]."""

    def __init__(self, shm: shared_memory.SharedMemory, world_size: int, sems: list, data_via: str, owner: bool):
        self.shm, self.world_size, self.sems, self.data_via, self.owner = shm, world_size, sems, data_via, owner
        self._memory_at = HEADER_BYTES
        self._data_at = HEADER_BYTES + 8 * world_size
        # numpy, not torch, copies in and out: a plain memcpy, where torch's multi-threaded copy of a few
        # hundred KB took milliseconds on a busy 2-core machine (benchmarks/tp_step_bench.py).
        self._data: np.ndarray | None = np.frombuffer(self._buf, dtype=np.uint8)  # one view, dropped before close

    @property
    def _buf(self) -> memoryview:
        buf = self.shm.buf
        if buf is None:
            raise RuntimeError("the step channel is closed")
        return buf

    def _data_view(self) -> np.ndarray:
        if self._data is None:
            raise RuntimeError("the step channel is closed")
        return self._data

    @classmethod
    def create(cls, world_size: int, data_bytes: int, data_via: str, ctx: BaseContext) -> StepChannel:
        """Rank 0: a fresh uniquely named block (no fixed name, so engines coexist) and one semaphore per worker."""
        if data_via not in ("shm", "broadcast"):
            raise ValueError(f"data_via={data_via!r}; use 'shm' or 'broadcast'")
        size = HEADER_BYTES + 8 * world_size + (data_bytes if data_via == "shm" else 0)
        shm = shared_memory.SharedMemory(create=True, size=size)
        return cls(shm, world_size, [ctx.Semaphore(0) for _ in range(world_size - 1)], data_via, owner=True)

    def handle(self) -> tuple:
        """What a worker needs to attach (passed as spawn arguments: semaphores only pickle at spawn time)."""
        return self.shm.name, self.world_size, self.sems, self.data_via

    @classmethod
    def attach(cls, name: str, world_size: int, sems: list, data_via: str) -> StepChannel:
        shm = shared_memory.SharedMemory(name=name)
        return cls(shm, world_size, sems, data_via, owner=False)

    # -- rank 0 ----------------------------------------------------------------------------------
    def _write_header(self, header: bytes) -> None:
        if len(header) + 8 > HEADER_BYTES:
            raise RuntimeError(f"step header of {len(header)} bytes exceeds the channel's {HEADER_BYTES}")
        self._buf[8 : 8 + len(header)] = header
        struct.pack_into("<Q", self._buf, 0, len(header))

    def send(self, inputs: Any) -> None:
        """Publish one step's inputs to every worker (rank 0 then runs the same forward)."""
        tensors: list[torch.Tensor] = []
        offset = [0]
        spec = _flatten(inputs, tensors, offset)
        nbytes = offset[0]
        if self.data_via == "shm":
            if self._data_at + nbytes > self.shm.size:
                raise RuntimeError(
                    f"step inputs of {nbytes} bytes exceed the channel's "
                    f"{self.shm.size - self._data_at}; raise the channel size"
                )
            at, data = self._data_at, self._data_view()
            for flat in tensors:
                data[at : at + flat.numel()] = flat.cpu().numpy()
                at += -(-flat.numel() // ALIGN) * ALIGN
        self._write_header(pickle.dumps(("step", spec, nbytes), protocol=pickle.HIGHEST_PROTOCOL))
        for sem in self.sems:
            sem.release()
        if self.data_via == "broadcast":
            parts = []
            for flat in tensors:
                parts.append(flat)
                pad = -flat.numel() % ALIGN
                if pad:
                    parts.append(flat.new_zeros(pad))
            dist.broadcast(torch.cat(parts), src=0)

    def send_exit(self) -> None:
        self._write_header(pickle.dumps((EXIT, None, 0)))
        for sem in self.sems:
            sem.release()

    def memory_bytes(self) -> list[int]:
        """Per-rank memory each worker last reported (rank 0's own slot is unused)."""
        return list(struct.unpack_from(f"<{self.world_size}q", self._buf, self._memory_at))

    # -- workers ---------------------------------------------------------------------------------
    def recv(self, rank: int, device: torch.device, timeout: float) -> Any:
        """The next step's inputs on `device`, EXIT, or None if nothing arrived within timeout seconds."""
        if not self.sems[rank - 1].acquire(timeout=timeout):
            return None
        (length,) = struct.unpack_from("<Q", self._buf, 0)
        cmd, spec, nbytes = pickle.loads(self._buf[8 : 8 + length])
        if cmd == EXIT:
            return EXIT
        if self.data_via == "shm":
            data = torch.from_numpy(self._data_view()[self._data_at : self._data_at + nbytes].copy()).to(device)
        else:
            data = torch.empty(nbytes, dtype=torch.uint8, device=device)
            dist.broadcast(data, src=0)
        return _unflatten(spec, data)

    def report_memory(self, rank: int, nbytes: int) -> None:
        struct.pack_into("<q", self._buf, self._memory_at + 8 * rank, nbytes)

    def close(self) -> None:
        """Drop the tensor view, close the block, and (rank 0) unlink its name."""
        self._data = None
        with contextlib.suppress(BufferError):  # a view is still alive somewhere; the OS frees the block at exit
            self.shm.close()
        if self.owner:
            with contextlib.suppress(FileNotFoundError):
                self.shm.unlink()
