"""One engine step as a runner runs it: StepInputs, PendingStep, and launch / collect / run over prepare /
execute / sample_device.

StepRunner holds that step logic once for ModelRunner (one rank) and TPModelRunner (rank 0 of a
tensor-parallel group, whose execute also hands the inputs to the workers). Runner is the Protocol
LLMEngine drives either of them (or a test's fake runner) through.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Protocol

import torch

from nanovllm_tui.engine.scheduling.sequence import Sequence
from nanovllm_tui.kernels.metadata import AttentionMetadata

StepItems = list[tuple[Sequence, int]]  # (sequence, number of its tokens this step computes)


@dataclass
class StepInputs:
    """Everything one forward and its sampling need, as tensors on the model's device."""

    input_ids: torch.Tensor
    positions: torch.Tensor
    meta: AttentionMetadata
    sample_rows: torch.Tensor
    temperatures: torch.Tensor
    top_ks: torch.Tensor | None = None
    top_ps: torch.Tensor | None = None
    generators: list[torch.Generator | None] | None = None
    seeds: torch.Tensor | None = None  # int64 [samples]: per-row Philox keys for the fused CUDA sampler
    offsets: torch.Tensor | None = None  # int64 [samples]: per-row Philox counters (token positions)
    all_greedy: bool = False  # decided on the host, so sampling needs no device read
    graph_bucket: int = 0  # > 0: inputs sit in that CUDA graph's static buffers; replay it
    graph_tokens: int = 0  # > 0: a mixed batch in the mixed graph of this many tokens; replay it
    num_rows: int = 0  # real rows (a graph bucket pads past them)
    graph_sample: bool = False  # a decode graph bucket whose sampling graph samples every row (see launch)
    penalty_rows: list[Sequence] | None = None  # the sampled sequences when one has penalties or min_p


@dataclass
class PendingStep:
    """A launched step: its items (and their row order), and its sampled tokens on their way to the host."""

    items: StepItems
    ordered: StepItems
    tokens: torch.Tensor | None  # device, one per sampled row in row order; -1 = non-finite logits
    host: torch.Tensor | None = None  # pinned copy (CUDA), valid once `ready` has happened
    ready: torch.cuda.Event | None = None


class Runner(Protocol):
    """What LLMEngine needs from a model runner: its device, its KV cache size, and steps."""

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def num_kvcache_blocks(self) -> int: ...

    def launch(self, items: StepItems, after: PendingStep | None = None, keep: list[int] | None = None) -> PendingStep:
        """Start one step; its tokens come back in collect()."""
        ...

    def collect(self, step: PendingStep) -> list[int | None]:
        """A launched step's tokens, one per item whose tokens are now all computed (else None)."""
        ...

    def run(self, items: StepItems) -> list[int | None]:
        """launch, then collect."""
        ...

    def rank_memory_bytes(self) -> list[int]:
        """Memory each tensor-parallel rank holds, rank 0 first (one entry without tensor parallelism)."""
        ...

    def shutdown(self) -> None:
        """Stop whatever the runner started (tensor-parallel workers); idempotent."""
        ...


class StepRunner(ABC):
    """launch / collect / run, over a subclass's prepare / execute / sample_device (looked up on the instance
    each step, so a benchmark may wrap them)."""

    def __init__(self, max_num_seqs: int) -> None:
        self._max_num_seqs = max_num_seqs
        # Pinned host room for sampled tokens: two buffers that alternate (at most two steps are in flight).
        self._pinned_tokens: list[torch.Tensor] = []

    @abstractmethod
    def prepare(self, items: StepItems, ahead: bool = False) -> StepInputs:
        """The step's device inputs (ahead: decode rows one token past each sequence's host state)."""

    @abstractmethod
    def execute(self, inputs: StepInputs) -> torch.Tensor | None:
        """The forward: logits of the rows to sample, or None if no row samples."""

    @abstractmethod
    def sample_device(self, logits: torch.Tensor, inputs: StepInputs) -> torch.Tensor:
        """One token per sampled row, on the device; -1 where the logits were not finite."""

    @abstractmethod
    def replay_sampled(self, bucket: int) -> torch.Tensor:
        """A graph_sample step's forward and sampling, as the decode and sampling graphs of `bucket` rows."""

    @property
    @abstractmethod
    def copy_stream(self) -> torch.cuda.Stream | None:
        """The stream the inputs' copies run on (CUDA), where the sampled tokens' copy is recorded."""

    def _host_tokens(self, n: int) -> torch.Tensor:
        """Pinned host room for one step's sampled tokens; two alternate (at most two steps are in flight)."""
        bufs = self._pinned_tokens
        if not bufs or bufs[0].numel() < n:
            size = max(n, self._max_num_seqs)
            bufs[:] = [torch.empty(size, dtype=torch.int64, pin_memory=True) for _ in range(2)]
        bufs.reverse()
        return bufs[0]

    def launch(self, items: StepItems, after: PendingStep | None = None, keep: list[int] | None = None) -> PendingStep:
        """Start one step without waiting for it: prepare, forward, sample; the tokens come back in collect().

        after: the decode step still in flight whose sampled tokens are this step's input ids (pipelined
        decoding: the items are `after`'s rows, or those at `keep`, each one token further on).
        """
        ordered = decodes_first(items) if after is None else items
        inputs = self.prepare(ordered, ahead=after is not None)
        if after is not None:
            src = after.tokens
            if src is None:  # the engine pipelines only behind a decode step, which samples every row
                raise RuntimeError("a pipelined step needs the sampled tokens of the step before it")
            if keep is not None:
                src = src[torch.tensor(keep, dtype=torch.int64).to(src.device, non_blocking=True)]
            with torch.inference_mode():
                inputs.input_ids[: len(ordered)].copy_(src.clamp(min=0))  # -1 rows fail; any valid id will do
        if inputs.graph_sample:  # two graph replays: forward, then LM head + sampler
            tokens: torch.Tensor | None = self.replay_sampled(inputs.graph_bucket)[: inputs.num_rows]
        else:
            logits = self.execute(inputs)
            tokens = self.sample_device(logits, inputs) if logits is not None else None
        host = ready = None
        if tokens is not None and tokens.is_cuda:
            host = self._host_tokens(tokens.numel())
            host[: tokens.numel()].copy_(tokens, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(self.copy_stream)
        return PendingStep(items, ordered, tokens, host, ready)

    def collect(self, step: PendingStep) -> list[int | None]:
        """Wait for a launched step's tokens: one per item whose tokens are now all computed, else None."""
        sampled: list[int | None]
        if step.tokens is None:
            sampled = []
        elif step.ready is not None and step.host is not None:
            step.ready.synchronize()
            sampled = step.host[: step.tokens.numel()].tolist()
        else:
            sampled = step.tokens.tolist()
        ordered, items = step.ordered, step.items
        if len(sampled) == len(ordered):  # every row sampled (decode steps)
            if ordered is items:
                return sampled
            by_seq = {id(seq): tok for (seq, _), tok in zip(ordered, sampled)}
            return [by_seq[id(seq)] for seq, _ in items]
        it = iter(sampled)
        by_seq = {id(seq): (next(it) if seq.num_computed_tokens + n == seq.num_tokens else None) for seq, n in ordered}
        return [by_seq[id(seq)] for seq, _ in items]

    def run(self, items: StepItems) -> list[int | None]:
        """One step: a sampled token for each item whose tokens are now all computed, else None."""
        return self.collect(self.launch(items))


def decodes_first(items: StepItems) -> StepItems:
    """The items with one-query rows moved to the front (stable), or `items` itself if they already are:
    attention backends send those leading rows of a mixed batch to their decode kernel."""
    seen_multi = False
    for _, n in items:
        if n != 1:
            seen_multi = True
        elif seen_multi:
            return [it for it in items if it[1] == 1] + [it for it in items if it[1] != 1]
    return items
