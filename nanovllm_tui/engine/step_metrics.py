"""What the engine reports about itself: one StepStats per step, EngineStats totals, and the block map."""

from __future__ import annotations

from collections.abc import Iterable

from nanovllm_tui.engine.outputs import RequestOutput
from nanovllm_tui.engine.scheduling.block_manager import BlockManager
from nanovllm_tui.engine.scheduling.scheduler import ScheduledBatch, Scheduler
from nanovllm_tui.engine.scheduling.sequence import Sequence
from nanovllm_tui.engine.stats import CACHED, FREE, SHARED, USED, BlockMap, StepStats


def step_stats(
    step: int,
    start: float,
    duration: float,
    batch: ScheduledBatch,
    counts: tuple[int, int, int],
    scheduler: Scheduler,
    outputs: list[RequestOutput],
    error: str | None,
    block_map: BlockMap | None,
) -> StepStats:
    """One step's StepStats: what ran (batch, counts = prefill / decode / chunked tokens) and the state after."""
    bm = scheduler.block_manager
    return StepStats(
        step=step,
        start_time=start,
        duration=duration,
        policy=scheduler.policy,
        num_seqs=len(batch.items),
        num_prefill_tokens=counts[0],
        num_decode_tokens=counts[1],
        num_running=len(scheduler.running),
        num_waiting=len(scheduler.waiting),
        num_blocks_free=bm.num_free,
        num_blocks_used=bm.num_used,
        num_blocks_cached=bm.num_cached,
        prefix_cache_queries=batch.prefix_queries,
        prefix_cache_hits=batch.prefix_hits,
        num_preemptions=len(batch.preempted),
        preempted_request_ids=tuple(s.request_id for s in batch.preempted),
        finished_request_ids=tuple(o.request_id for o in outputs if o.finished),
        error=error,
        block_map=block_map,
        prefilling=tuple(
            (s.request_id, s.num_computed_tokens, s.num_prompt_tokens)
            for s in scheduler.running
            if s.num_computed_tokens < s.num_prompt_tokens
        ),
    )


def classify(batch: ScheduledBatch) -> tuple[int, int, int]:
    """(prefill tokens, decode tokens, prefills cut short by the budget), before the step runs."""
    items = batch.items
    prefill = chunked = 0
    decode = len(items)
    for seq, n in items:  # runs every step over every request: plain attribute reads, decodes fall through
        num_tokens = len(seq.token_ids)
        if n != 1 or num_tokens != seq.num_computed_tokens + 1 or num_tokens <= seq.num_prompt_tokens:
            decode -= 1
            prefill += n
            chunked += n < num_tokens - seq.num_computed_tokens
    return prefill, decode, chunked


def block_map(bm: BlockManager, running: Iterable[Sequence]) -> BlockMap:
    """Every block's state and first owning request, for the dashboard's heat map."""
    states = bytearray(FREE for _ in range(bm.num_blocks))
    owners: list[str | None] = [None] * bm.num_blocks
    for block_id in bm.cached_lru:
        states[block_id] = CACHED
    for seq in running:
        for block_id in seq.block_table:
            if owners[block_id] is None:
                owners[block_id] = seq.request_id
            states[block_id] = SHARED if bm.blocks[block_id].ref_count > 1 else USED
    return BlockMap(bytes(states), tuple(owners))
