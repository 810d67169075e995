"""Per-step cost of handing StepInputs from rank 0 to a tensor-parallel worker, by transport.

    python benchmarks/tp_step_bench.py [--iters 300]

Two ranks (rank 0 here, one spawned worker; gloo on CPU, NCCL on CUDA). Each iteration rank 0 sends one
step's inputs and both ranks then do a one-element all-reduce (as the forward's first collective would);
the table reports microseconds per step above a loop that does only that all-reduce. Transports:
  shm        header + tensors through shared memory, a semaphore per worker (engine.tp_channel, CPU default)
  broadcast  header through shared memory, tensors as one torch.distributed broadcast (CUDA default)
  object     torch.distributed.broadcast_object_list of the whole StepInputs (no shared memory at all)
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
import torch.distributed as dist

from nanovllm_tui.engine.execution.model_runner import StepInputs
from nanovllm_tui.engine.tp.channel import StepChannel
from nanovllm_tui.engine.tp.worker import init_group
from nanovllm_tui.kernels.metadata import AttentionMetadata

MODES = ("none", "shm", "broadcast", "object")
SHAPES = {"decode 256 seqs": (256, 256, 17), "prefill 8192 tokens / 16 seqs": (8192, 16, 17)}  # tokens, seqs, width


def make_inputs(tokens: int, seqs: int, width: int, device: torch.device) -> StepInputs:
    i64: dict[str, Any] = dict(dtype=torch.int64, device=device)
    i32: dict[str, Any] = dict(dtype=torch.int32, device=device)
    meta = AttentionMetadata(
        slot_mapping=torch.arange(tokens, **i64),
        context_lens=torch.full((seqs,), 200, **i32),
        block_tables=torch.arange(seqs * width, **i32).view(seqs, width),
        cu_seqlens_q=torch.arange(seqs + 1, **i32) * (tokens // seqs),
        max_seqlen_q=tokens // seqs,
        max_seqlen_k=200,
        is_decode=tokens == seqs,
    )
    return StepInputs(
        input_ids=torch.randint(0, 10000, (tokens,), **i64),
        positions=torch.arange(tokens, **i64),
        meta=meta,
        sample_rows=torch.arange(seqs, **i64),
        temperatures=torch.zeros(seqs, device=device),
        num_rows=seqs,
    )


def run_mode(rank: int, mode: str, channel: dict, inputs: StepInputs | None, iters: int, device) -> float:
    one = torch.ones(1, device=device)
    dist.barrier()
    start = time.perf_counter()
    for _ in range(iters):
        if mode in ("shm", "broadcast"):
            ch = channel[mode]
            if rank == 0:
                ch.send(inputs)
            else:
                while ch.recv(rank, device, timeout=1.0) is None:
                    pass
        elif mode == "object":
            box = [inputs if rank == 0 else None]
            dist.broadcast_object_list(box, src=0, device=device if device.type == "cuda" else None)
        dist.all_reduce(one)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def worker(port: int, backend: str, handles: dict, iters: int) -> None:
    device = torch.device("cuda", 1) if backend == "nccl" else torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(device)
    torch.set_num_threads(1)
    init_group(backend, port, 1, 2, 60)
    channel = {m: StepChannel.attach(*h) for m, h in handles.items()}
    for _ in SHAPES:
        for mode in MODES:
            run_mode(1, mode, channel, None, iters, device)
    for ch in channel.values():
        ch.close()
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=300)
    args = ap.parse_args()
    cuda = torch.cuda.is_available() and torch.cuda.device_count() >= 2
    backend, device = ("nccl", torch.device("cuda", 0)) if cuda else ("gloo", torch.device("cpu"))
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    ctx = mp.get_context("spawn")
    channel = {m: StepChannel.create(2, 1 << 22, m, ctx) for m in ("shm", "broadcast")}
    store = dist.TCPStore("127.0.0.1", 0, 2, True, wait_for_workers=False)
    p = ctx.Process(
        target=worker, args=(store.port, backend, {m: c.handle() for m, c in channel.items()}, args.iters), daemon=True
    )
    p.start()
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(backend, store=store, rank=0, world_size=2)
    print(
        f"backend {backend}, device {device}, {args.iters} steps per cell; microseconds per step above a "
        "1-element all-reduce"
    )
    print(f"| {'step':<30} | {'all-reduce only':>15} | {'shm':>8} | {'broadcast':>9} | {'object':>8} |")
    print(f"|{'-' * 32}|{'-' * 17}|{'-' * 10}|{'-' * 11}|{'-' * 10}|")
    for name, shape in SHAPES.items():
        inputs = make_inputs(*shape, device)
        t = {mode: run_mode(0, mode, channel, inputs, args.iters, device) for mode in MODES}
        base = t["none"]
        print(
            f"| {name:<30} | {base * 1e6:>15.1f} | {(t['shm'] - base) * 1e6:>8.1f} | "
            f"{(t['broadcast'] - base) * 1e6:>9.1f} | {(t['object'] - base) * 1e6:>8.1f} |"
        )
    p.join(30)
    for ch in channel.values():
        ch.close()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
