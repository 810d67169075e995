"""Tensor-parallel worker process (ranks 1..N-1): join the group, build this rank's shard, run each step rank 0 sends.

Contract: a worker never outlives rank 0 (a watchdog thread exits when the parent is gone), ignores
Ctrl+C (rank 0 decides when the group stops), and reports any error to rank 0 over its pipe before exiting.
"""

from __future__ import annotations

import contextlib
import datetime
import faulthandler
import os
import signal
import threading
import time
import traceback
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the worker imports torch and the engine only once it runs (spawn re-imports this module)
    import torch.distributed as dist

    from nanovllm_tui.engine.config import Config
    from nanovllm_tui.engine.execution.model_runner import ModelRunner
    from nanovllm_tui.engine.execution.step import StepInputs
    from nanovllm_tui.engine.tp.channel import StepChannel

PARENT_POLL_S = 0.5


def _exit_when_orphaned(parent_pid: int) -> None:
    """Watchdog thread: the main thread may be blocked in a collective, so leave from here."""
    while True:
        time.sleep(PARENT_POLL_S)
        if os.getppid() != parent_pid:
            os._exit(0)


def init_group(
    backend: str, store_port: int, rank: int, world_size: int, timeout_s: float, master: bool = False
) -> dist.TCPStore:
    """Join the rendezvous store (a free port rank 0 picked) and the default process group; returns the store."""
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=timeout_s)
    store = dist.TCPStore("127.0.0.1", store_port, world_size, master, timeout=timeout, wait_for_workers=False)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
    return store


def _into_graph_buffers(runner: ModelRunner, inputs: StepInputs) -> None:
    """A CUDA-graph step replays this rank's own captured graph, so the inputs must sit in its static buffers."""
    graphs = runner.cuda_graphs
    if graphs is None:
        return
    if inputs.graph_tokens:
        ids, positions, meta = graphs.mixed_meta(inputs.graph_tokens)
        if meta.num_decode_dev is not None and inputs.meta.num_decode_dev is not None:
            meta.num_decode_dev.copy_(inputs.meta.num_decode_dev)
    else:
        ids, positions, meta = graphs.meta(inputs.graph_bucket)
    ids.copy_(inputs.input_ids)
    positions.copy_(inputs.positions)
    for name in ("slot_mapping", "context_lens", "block_tables", "cu_seqlens_q"):
        getattr(meta, name).copy_(getattr(inputs.meta, name))


def worker_main(
    config: Config,
    rank: int,
    world_size: int,
    backend: str,
    store_port: int,
    channel_handle: tuple,
    conn: Connection,
    parent_pid: int,
    timeout_s: float,
    num_threads: int,
) -> None:
    """Entry point of a spawned worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1` dumps a stuck worker's stacks
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    code = 0
    channel: StepChannel | None = None
    runner: ModelRunner | None = None
    try:
        import torch

        from nanovllm_tui.engine.execution.model_runner import ModelRunner
        from nanovllm_tui.engine.tp.channel import StepChannel

        if num_threads > 0:
            torch.set_num_threads(num_threads)
        if backend == "nccl":
            torch.cuda.set_device(rank)
        conn.send(("hello", rank))
        init_group(backend, store_port, rank, world_size, timeout_s)
        runner = ModelRunner(config)
        channel = StepChannel.attach(*channel_handle)
        channel.report_memory(rank, runner.memory_bytes())
        conn.send(("ready", runner.num_kvcache_blocks))
        _serve(runner, channel, rank)
    except BaseException:
        code = 1
        with contextlib.suppress(OSError, ValueError):
            conn.send(("error", traceback.format_exc()))
    finally:
        _leave(channel, runner, code)
    os._exit(code)


def _serve(runner: ModelRunner, channel: StepChannel, rank: int) -> None:
    """Run every step rank 0 sends, until it sends EXIT."""
    from nanovllm_tui.engine.tp.channel import EXIT

    while True:
        inputs = channel.recv(rank, runner.device, timeout=PARENT_POLL_S)
        if inputs is None:
            continue
        if isinstance(inputs, str) and inputs == EXIT:
            break
        if (inputs.graph_bucket or inputs.graph_tokens) and runner.cuda_graphs is not None:
            _into_graph_buffers(runner, inputs)
        runner.execute(inputs)
        channel.report_memory(rank, runner.memory_bytes())


def _leave(channel: StepChannel | None, runner: ModelRunner | None, code: int) -> None:
    """Close the channel; after a clean exit also release the graphs and leave the process group."""
    if channel is not None:
        channel.close()
    try:
        import torch.distributed as dist

        if runner is not None and code == 0:
            runner.release_cuda_graphs()
        if dist.is_initialized() and code == 0:  # rank 0 tears down at the same time (see tp.group.WorkerGroup.close)
            dist.destroy_process_group()
    except Exception:  # the group may already be broken by a dead peer; we are leaving anyway
        pass
