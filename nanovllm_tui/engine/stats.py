"""Immutable stats snapshots: cumulative EngineStats and one StepStats per engine step (vLLM metric names)."""

from __future__ import annotations

from dataclasses import dataclass

# Block states in a block map.
FREE, CACHED, USED, SHARED = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class BlockMap:
    """State of every block (FREE/CACHED/USED/SHARED) and the request holding it (first holder), for heat maps."""

    states: bytes
    owners: tuple[str | None, ...]


@dataclass(frozen=True, slots=True)
class EngineStats:
    num_blocks_total: int
    num_blocks_used: int
    num_blocks_cached: int
    num_blocks_free: int
    block_size: int
    prefix_cache_queries: int
    prefix_cache_hits: int
    num_preemptions: int
    num_steps: int
    num_prefill_tokens: int
    num_decode_tokens: int
    num_running: int
    num_waiting: int
    num_chunked_prefills: int = 0  # scheduled prefills cut short by the token budget
    tensor_parallel_size: int = 1
    rank_memory_bytes: tuple[int, ...] = ()  # per tensor-parallel rank, rank 0 first (CUDA: allocated bytes)

    @property
    def kv_cache_usage_perc(self) -> float:
        return self.num_blocks_used / self.num_blocks_total if self.num_blocks_total else 0.0

    @property
    def prefix_cache_hit_rate(self) -> float:
        return self.prefix_cache_hits / self.prefix_cache_queries if self.prefix_cache_queries else 0.0


@dataclass(frozen=True, slots=True)
class StepStats:
    step: int
    start_time: float
    duration: float
    policy: str
    num_seqs: int
    num_prefill_tokens: int
    num_decode_tokens: int
    num_running: int
    num_waiting: int
    num_blocks_free: int
    num_blocks_used: int
    num_blocks_cached: int
    prefix_cache_queries: int
    prefix_cache_hits: int
    num_preemptions: int
    preempted_request_ids: tuple[str, ...] = ()
    finished_request_ids: tuple[str, ...] = ()
    error: str | None = None
    block_map: BlockMap | None = None
    # (request_id, prompt tokens computed, prompt tokens) of each request still prefilling after the step:
    # a long prompt's progress shows before its first token.
    prefilling: tuple[tuple[str, int, int], ...] = ()

    @property
    def num_blocks_total(self) -> int:
        return self.num_blocks_free + self.num_blocks_used + self.num_blocks_cached

    @property
    def kv_cache_usage_perc(self) -> float:
        total = self.num_blocks_total
        return self.num_blocks_used / total if total else 0.0
