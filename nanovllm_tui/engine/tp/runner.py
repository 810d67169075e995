"""Tensor parallelism, rank 0's side: validate the size, spawn workers, broadcast each step, and never leave orphans.

TPModelRunner stands in for ModelRunner in LLMEngine when tensor_parallel_size > 1: it holds rank 0's
own ModelRunner (its weight and KV-cache shard), starts ranks 1..N-1 as spawned processes
(engine.tp_worker) joined through torch.distributed (gloo on CPU, NCCL on CUDA, one GPU per rank),
and sends each step's StepInputs over an engine.tp_channel.StepChannel before running its own forward.
A worker that dies, or a step that fails part-way through its collectives, stops the whole group and
raises EngineDeadError; shutdown() (also run by a finalizer and at interpreter exit) stops the workers.
"""

from __future__ import annotations

import datetime
import multiprocessing as mp
import os
import weakref
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext, SpawnProcess
from typing import Any

import torch
import torch.distributed as dist

from nanovllm_tui.engine.config import Config
from nanovllm_tui.engine.devices import resolve_device
from nanovllm_tui.engine.execution.cuda_graph import CUDAGraphRunner
from nanovllm_tui.engine.execution.model_runner import ModelRunner
from nanovllm_tui.engine.execution.step import StepInputs, StepItems, StepRunner
from nanovllm_tui.engine.tp.channel import ALIGN, StepChannel
from nanovllm_tui.engine.tp.group import EngineDeadError, WorkerGroup
from nanovllm_tui.engine.tp.worker import worker_main
from nanovllm_tui.kernels.backend import AttentionBackend

COLLECTIVE_TIMEOUT_S = 120.0  # last resort only: a dead worker is noticed within a second by its process sentinel
STARTUP_TIMEOUT_S = 300.0  # workers load their shard of the weights in this time


def valid_tp_sizes(hf_config: Any, limit: int = 64) -> list[int]:
    """Sizes that split the model's attention heads, kv heads (or replicate them) and MLP evenly."""
    heads = hf_config.num_attention_heads
    kv = getattr(hf_config, "num_key_value_heads", None) or heads
    inter = hf_config.intermediate_size
    return [
        n
        for n in range(1, min(limit, heads) + 1)
        if heads % n == 0 and inter % n == 0 and (kv % n == 0 if kv >= n else n % kv == 0)
    ]


def check_tp_config(config: Config) -> None:
    """Start-up errors as one-line ValueErrors naming the fix, raised before any process is spawned."""
    n, hf = config.tensor_parallel_size, config.hf_config
    heads = hf.num_attention_heads
    kv = getattr(hf, "num_key_value_heads", None) or heads
    valid = ", ".join(map(str, valid_tp_sizes(hf)))
    if heads % n:
        raise ValueError(
            f"tensor_parallel_size={n} does not divide the model's {heads} attention heads; use one of {valid}"
        )
    if kv >= n and kv % n:
        raise ValueError(
            f"tensor_parallel_size={n} does not divide the model's {kv} key-value heads; use one of {valid}"
        )
    if kv < n and n % kv:
        raise ValueError(
            f"tensor_parallel_size={n} is not a multiple of the model's {kv} key-value heads "
            f"(needed to replicate them); use one of {valid}"
        )
    if hf.intermediate_size % n:
        raise ValueError(
            f"tensor_parallel_size={n} does not divide the MLP size {hf.intermediate_size}; use one of {valid}"
        )
    device = resolve_device(config.device)
    if device.type == "cuda" and n > torch.cuda.device_count():
        raise ValueError(
            f"tensor_parallel_size={n} needs {n} GPUs but {torch.cuda.device_count()} are visible; "
            "lower tensor_parallel_size= or expose more GPUs (CUDA_VISIBLE_DEVICES)"
        )
    if dist.is_initialized():
        raise ValueError(
            "torch.distributed is already initialised in this process (another tensor-parallel "
            "engine is running?); call its shutdown() first"
        )


def _channel_bytes(config: Config) -> int:
    """Room for the largest step's integer inputs, twice over (padding for CUDA-graph buckets and the like)."""
    tokens, seqs = config.max_num_batched_tokens, config.max_num_seqs
    width = -(-config.max_model_len // config.kvcache_block_size) + 1
    return 2 * (8 * (3 * tokens + 3 * seqs + 1) + 4 * seqs * (width + 1)) + 32 * ALIGN


def _spawn_workers(
    config: Config, backend: str, store_port: int, channel: StepChannel, ctx: SpawnContext
) -> tuple[list[SpawnProcess], list[Connection]]:
    """Start ranks 1..N-1 (each with a pipe back to rank 0 for its handshakes and errors)."""
    n = config.tensor_parallel_size
    threads = max(1, (os.cpu_count() or 1) // n) if backend == "gloo" else 0
    procs, conns = [], []
    for rank in range(1, n):
        parent_conn, child_conn = ctx.Pipe(duplex=False)
        p = ctx.Process(
            target=worker_main,
            name=f"tp-worker-{rank}",
            daemon=True,
            args=(
                config,
                rank,
                n,
                backend,
                store_port,
                channel.handle(),
                child_conn,
                os.getpid(),
                COLLECTIVE_TIMEOUT_S,
                threads,
            ),
        )
        p.start()
        child_conn.close()
        procs.append(p)
        conns.append(parent_conn)
    return procs, conns


class TPModelRunner(StepRunner):
    """Rank 0 of a tensor-parallel group, with ModelRunner's interface (prepare / execute / sample / run)."""

    def __init__(self, config: Config, progress: Callable[[str, int, int, str], None] | None = None):
        """progress: hears rank 0's start-up phases (its shard's "load", its "cuda graphs"), as ModelRunner's."""
        super().__init__(config.max_num_seqs)
        check_tp_config(config)
        n = config.tensor_parallel_size
        device = resolve_device(config.device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # NVLink multicast stays off (inherited by workers)
        ctx = mp.get_context("spawn")
        # Port 0: the store binds a free port itself, so two engines or test runs on one host never collide.
        store = dist.TCPStore("127.0.0.1", 0, n, True, wait_for_workers=False)
        channel = StepChannel.create(n, _channel_bytes(config), "broadcast" if backend == "nccl" else "shm", ctx)
        procs, conns = _spawn_workers(config, backend, store.port, channel, ctx)
        self.group = WorkerGroup(procs, conns, channel, backend)
        self._finalizer = weakref.finalize(self, self.group.close)  # also runs at interpreter exit
        self.channel = channel
        self.tensor_parallel_size = n
        self.runner = self._start_rank0(config, store, backend, progress)
        self.num_kvcache_blocks = self.runner.num_kvcache_blocks
        self.group.start_watchdog()

    def _start_rank0(
        self,
        config: Config,
        store: dist.TCPStore,
        backend: str,
        progress: Callable[[str, int, int, str], None] | None = None,
    ) -> ModelRunner:
        """Wait for the workers, join the group, build rank 0's shard; check that every rank agrees on the
        KV cache. Any failure stops the workers and raises (EngineDeadError naming a dead worker's error)."""
        n = config.tensor_parallel_size
        try:
            try:
                self.group.wait_for("hello", STARTUP_TIMEOUT_S)
            except EngineDeadError as exc:  # dying before the first word is almost always this
                raise EngineDeadError(
                    f"{exc}; if your script starts the engine at import time, put that code under "
                    '`if __name__ == "__main__":` (workers are spawned and re-import it)'
                ) from None
            if backend == "nccl":
                torch.cuda.set_device(0)
            dist.init_process_group(
                backend, store=store, rank=0, world_size=n, timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S)
            )
            self.group.pg_ours = True
            runner = ModelRunner(config, progress)
            self.group.release = runner.release_cuda_graphs
            blocks = self.group.wait_for("ready", STARTUP_TIMEOUT_S)
        except Exception as exc:
            reason = None if isinstance(exc, (EngineDeadError, ValueError)) else self.group.death_reason(wait_s=2.0)
            self.shutdown()
            if reason:  # rank 0's collective failed because a worker died first: report the worker's error
                raise EngineDeadError(f"{reason}; the engine did not start") from exc
            raise
        except BaseException:
            self.shutdown()
            raise
        if any(b != runner.num_kvcache_blocks for b in blocks):
            self.shutdown()
            counts = [runner.num_kvcache_blocks, *blocks]
            raise EngineDeadError(f"ranks disagree on the KV cache size ({counts} blocks)")
        return runner

    # -- rank 0's runner, as the engine and the app read it --------------------------------------
    @property
    def device(self) -> torch.device:
        return self.runner.device

    @property
    def dtype(self) -> torch.dtype:
        return self.runner.dtype

    @property
    def block_size(self) -> int:
        return self.runner.block_size

    @property
    def config(self) -> Config:
        return self.runner.config

    @property
    def backend(self) -> AttentionBackend:
        return self.runner.backend

    @property
    def cuda_graphs(self) -> CUDAGraphRunner | None:
        return self.runner.cuda_graphs

    @property
    def copy_stream(self) -> torch.cuda.Stream | None:
        return self.runner.copy_stream

    # -- one step ------------------------------------------------------------------------------
    def _check_alive(self) -> None:
        if self.group.closed or self.group.reason:
            reason = self.group.reason or self.group.death_reason()
            self.shutdown()
            raise EngineDeadError(
                f"{reason or 'the tensor-parallel engine was shut down'}; "
                "the engine stopped — create a new LLM to continue"
            )

    def execute(self, inputs: StepInputs) -> torch.Tensor | None:
        """Send the inputs to every worker, then run rank 0's shard; any failure here stops the group."""
        self._check_alive()
        try:
            self.channel.send(inputs)
            return self.runner.execute(inputs)
        except Exception as exc:
            reason = self.group.death_reason(wait_s=2.0)
            self.shutdown()
            raise EngineDeadError(
                f"{reason or f'tensor-parallel step failed ({type(exc).__name__}: {exc})'}; "
                "the engine stopped — create a new LLM to continue"
            ) from exc
        except BaseException:  # Ctrl+C mid-step: the ranks are out of step, so stop them, then let it propagate
            self.shutdown()
            raise

    def sample(self, logits: torch.Tensor, inputs: StepInputs) -> list[int]:
        return self.runner.sample(logits, inputs)

    def prepare(self, items: StepItems, ahead: bool = False) -> StepInputs:
        return self.runner.prepare(items, ahead)

    def sample_device(self, logits: torch.Tensor, inputs: StepInputs) -> torch.Tensor:
        return self.runner.sample_device(logits, inputs)

    def replay_sampled(self, bucket: int) -> torch.Tensor:
        """Never reached: sampling graphs are not captured under tensor parallelism (see graph_sampler)."""
        return self.runner.replay_sampled(bucket)

    # -- stats and lifecycle ---------------------------------------------------------------------
    def memory_bytes(self) -> int:
        """Rank 0's memory (rank_memory_bytes has every rank's)."""
        return self.runner.memory_bytes()

    def rank_memory_bytes(self) -> list[int]:
        """Memory each rank holds (CUDA: allocated bytes; CPU: weights + KV cache), rank 0 first."""
        return [self.runner.memory_bytes(), *self.channel.memory_bytes()[1:]]

    def shutdown(self) -> None:
        """Stop the workers and leave the process group; idempotent."""
        self._finalizer()
