"""Sequence: one request's tokens, progress through the KV cache, and timings."""

from __future__ import annotations

import time
from enum import Enum, auto
from itertools import count

import torch

from nanovllm_tui.engine.sampling_params import SamplingParams


class SequenceStatus(Enum):
    WAITING = auto()
    RUNNING = auto()
    FINISHED = auto()


class Sequence:
    """A request as the scheduler sees it.

    Progress is counted vLLM-V1 style: `num_computed_tokens` of `token_ids` have KV in the cache;
    a step schedules some of the rest (a prefill chunk, or the one token a decode adds).
    """

    __slots__ = (
        "admitted",
        "arrival_time",
        "block_hashes",
        "block_table",
        "error",
        "finish_reason",
        "first_token_time",
        "generator",
        "max_num_tokens",
        "num_cached_tokens",
        "num_committed_blocks",
        "num_computed_tokens",
        "num_preemptions",
        "num_prompt_tokens",
        "request_id",
        "sampling_params",
        "seq_id",
        "status",
        "stop_token_ids",
        "stream",
        "token_ids",
        "token_times",
    )
    _ids = count()

    def __init__(
        self,
        token_ids: list[int],
        sampling_params: SamplingParams,
        request_id: str | None = None,
        eos_token_ids: tuple[int, ...] = (),
        max_model_len: int | None = None,
    ):
        self.seq_id = next(Sequence._ids)
        self.request_id = request_id if request_id is not None else str(self.seq_id)
        self.token_ids = list(token_ids)
        self.num_prompt_tokens = len(token_ids)
        self.sampling_params = sampling_params
        self.status = SequenceStatus.WAITING
        self.num_computed_tokens = 0
        # Grows by appends only; anything else assigns a new list (InputBuilder skips rows it already holds).
        self.block_table: list[int] = []
        self.block_hashes: list[int] = []  # chain hash of each full block, computed as blocks fill
        self.num_committed_blocks = 0  # leading blocks whose hashes are already published
        self.finish_reason: str | None = None
        self.error: str | None = None
        # Metrics.
        self.arrival_time = time.monotonic()
        self.first_token_time: float | None = None
        self.token_times: list[float] = []
        self.num_cached_tokens = 0  # prompt tokens served from the prefix cache at first admission
        self.num_preemptions = 0
        self.admitted = False
        self.generator: torch.Generator | None = None
        self.stream = True  # an output every step; False: only the final one (LLMEngine.add_request)
        # Stop rules resolved once, not per token: the length at which it stops, and the ids that stop it.
        limit = self.num_prompt_tokens + sampling_params.max_tokens
        self.max_num_tokens = limit if max_model_len is None else min(limit, max_model_len)
        stop = set(sampling_params.stop_token_ids or ())
        if not sampling_params.ignore_eos:
            stop.update(eos_token_ids)
        self.stop_token_ids = frozenset(stop)
        if sampling_params.seed is not None:
            self.generator = torch.Generator().manual_seed(sampling_params.seed & 0xFFFF_FFFF_FFFF_FFFF)

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_completion_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def completion_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status == SequenceStatus.FINISHED

    def append_token(self, token_id: int, now: float | None = None) -> None:
        """Add a sampled token; `now` (time.monotonic()) lets a step stamp all its tokens with one clock read."""
        if now is None:
            now = time.monotonic()
        if self.first_token_time is None:
            self.first_token_time = now
        self.token_times.append(now)
        self.token_ids.append(token_id)

    def finish(self, reason: str, error: str | None = None) -> None:
        self.status = SequenceStatus.FINISHED
        self.finish_reason = reason
        self.error = error
