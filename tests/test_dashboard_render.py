"""The dashboard's pure pieces: block-map downsampling, sparklines, gauges, and the StatsWindow bookkeeping."""

from __future__ import annotations

from nanovllm_tui.app.render import block_cells, gauge, heat_map, spark
from nanovllm_tui.app.session import session_of
from nanovllm_tui.app.stats_window import StatsWindow
from nanovllm_tui.engine.stats import CACHED, FREE, SHARED, USED, BlockMap, StepStats


def step(i: int, preempted: tuple[str, ...] = (), queries: int = 0, hits: int = 0) -> StepStats:
    return StepStats(
        step=i,
        start_time=100.0 + i,
        duration=0.5,
        policy="mixed",
        num_seqs=2,
        num_prefill_tokens=10,
        num_decode_tokens=2,
        num_running=2,
        num_waiting=0,
        num_blocks_free=6,
        num_blocks_used=2,
        num_blocks_cached=0,
        prefix_cache_queries=queries,
        prefix_cache_hits=hits,
        num_preemptions=len(preempted),
        preempted_request_ids=preempted,
    )


def test_block_cells_keep_the_busiest_state_and_the_majority_owner():
    bm = BlockMap(
        bytes([FREE, USED, USED, CACHED, FREE, FREE, SHARED, FREE]),
        (None, "s1-1", "s2-1", None, None, None, "s2-1", None),
    )  # two blocks per cell below
    cells, per_cell = block_cells(bm, 4)
    assert per_cell == 2
    assert cells == [(USED, "s1-1"), (USED, "s2-1"), (FREE, None), (SHARED, "s2-1")]
    cells, per_cell = block_cells(bm, 100)  # more cells than blocks: one block per cell
    assert per_cell == 1 and len(cells) == 8


def test_heat_map_rows_and_glyphs():
    bm = BlockMap(bytes([USED, CACHED, FREE, SHARED]), ("s1-1", None, None, "bench1-0"))
    text, per_cell = heat_map(bm, 2, 2, session_of)
    assert text.plain == "█░\n·▓" and per_cell == 1


def test_spark_and_gauge():
    line = spark([0, 4, 8], 3).plain
    assert line[0] == " " and line[2] == "█" and len(line) == 3
    assert len(spark(list(range(100)), 10).plain) == 10
    assert gauge(0.5, 10).plain == "█████·····"
    assert gauge(1.5, 4).plain == "████" and gauge(0, 3).plain == "···"


def test_stats_window_takes_only_new_steps_and_logs_preemptions():
    w = StatsWindow(maxlen=3)
    assert w.add([step(1), step(2, preempted=("s1-1",))]) == 2
    assert w.add([step(1), step(2), step(3, queries=32, hits=16)]) == 1  # the ring buffer is re-read
    assert [e.request_id for e in w.events] == ["s1-1"]
    assert w.last_step == 3 and w.hit_rate_series() == [0.5]
    w.add([step(4), step(5)])
    assert [s.step for s in w.steps] == [3, 4, 5]  # bounded
    prefill, decode = w.rates(now=105.5, window=2.0)
    assert prefill > 0 and decode > 0
    assert w.rates(now=1000.0) == (0.0, 0.0)  # idle: no recent steps
