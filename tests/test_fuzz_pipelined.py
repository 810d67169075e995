"""Fuzzing pipelined decoding (async_scheduling): the engine launches the next decode step before the one in
flight is read back (LLMEngine._step_pipelined, Scheduler.schedule_ahead, InputBuilder.build(ahead=True)).

The engine below is PipelinedFakeEngine (tests/fuzz_harness.py): at every launch its runner checks the real
InputBuilder's tensors against the sequences' host state (one token further for an ahead step) and the
launch/collect/keep contract, and every schedule_ahead call is checked against its contract; the tokens
are a pure function of the paged cache, so a pipelined engine must give exactly the synchronous one's.

1. The scheduler fuzz machine (tests/test_fuzz_scheduler.py) over pipelined engines, plus failures at collect.
2. Scripted runs, each driven pipelined and synchronously with the same script: many requests of varied
   max_tokens, stop tokens and strings, arrivals and aborts mid-run, a tight cache with block sizes 4 and 16,
   prefix caching (incl. prompts that extend an earlier request's output, so they hit blocks its pipelined
   decode steps hashed); identical tokens, finish reasons and text, and a clean block pool at the end.
   A failure names its seed: pipelined_script.drive(make_script(seed, block), True, collections.Counter())
   replays it.
NANOVLLM_FUZZ=long (or --long) runs more examples and seeds.
"""

from __future__ import annotations

import os

import pytest
import test_fuzz_scheduler as base
from hypothesis import HealthCheck, settings
from hypothesis.stateful import rule, run_state_machine_as_test
from pipelined_script import AHEAD_STATS, Req, drive, make_script

PROFILES = {  # (machine examples, rules per example, scripted seeds per block size)
    "ci": (300, 25, 60),
    "long": (3000, 80, 1000),
}


def _profile(request) -> str:
    return "long" if request.config.getoption("--long", default=False) else os.environ.get("NANOVLLM_FUZZ", "ci")


# -- 1. the fuzz machine, pipelined ---------------------------------------------------------------------
class PipelinedEngineMachine(base.EngineMachine):
    """EngineMachine over PipelinedFakeEngine; its requests are still compared with synchronous solo runs."""

    pipelined = True

    @rule()
    def fail_next_collect(self):
        """The next read-back fails (in a pipelined step: after the step behind it was launched)."""
        self.rule_count += 1
        self.engine.model_runner.fail_next = "collect"

    def teardown(self):
        super().teardown()
        if self.engine is not None:
            r = self.engine.model_runner
            for key, value in (
                ("ahead_launches", r.num_ahead_launches),
                ("ahead_same_list", r.num_ahead_same_list),
                ("ahead_partial", r.num_ahead_partial),
                ("ahead_discarded", r.num_ahead_discarded),
            ):
                base.COVERAGE[key] = base.COVERAGE.get(key, 0) + value


def test_fuzz_engine_scheduler_pipelined(request, capsys):
    name = _profile(request)
    examples, rules, _ = PROFILES[name]
    base.COVERAGE.clear()
    run_state_machine_as_test(
        PipelinedEngineMachine,
        settings=settings(
            max_examples=examples,
            stateful_step_count=rules,
            deadline=None,
            derandomize=name == "ci",
            print_blob=True,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
        ),
    )
    with capsys.disabled():
        print(f"\n[pipelined fuzz profile {name}] {examples} examples: {base.COVERAGE}")
    # Not prefix hits: which examples hypothesis draws here shifts with what else the session imports (0 hits
    # when tests/test_sample_triton.py was collected too, all invariants holding); the scripted test below
    # requires prefix hits, including on blocks pipelined steps hashed, on every run.
    for key in ("ahead_launches", "ahead_partial", "ahead_discarded", "preemptions", "aborted", "failed_forward"):
        assert base.COVERAGE.get(key, 0) > 0, f"the fuzzer never reached {key}: {base.COVERAGE}"


# -- 2. scripted runs: pipelined == synchronous (tests/pipelined_script.py) --------------------------------
SCRIPTED_STATS = (*AHEAD_STATS, "preemptions", "prefix_hit_tokens", "decode_block_hits", "stop", "length", "abort")


def _compare(r: Req, got: dict, want: dict, where: str) -> str | None:
    """Check one request's pipelined output against its synchronous one; its finish reason, or None (aborted
    at a step() call: each run stopped it at its own point of the same output)."""
    if r.abort_at_call is not None and "abort" in (got["finish_reason"], want["finish_reason"]):
        short, long_ = sorted((got["token_ids"], want["token_ids"]), key=len)
        assert long_[: len(short)] == short, f"{where}: pipelined {got} vs synchronous {want}"
        return None
    a, b = got["token_ids"], want["token_ids"]
    i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    assert a == b, f"{where}: tokens differ from index {i}:\n  pipelined   {a}\n  synchronous {b}"
    assert (got["finish_reason"], got["error"], got["text"]) == (want["finish_reason"], want["error"], want["text"]), (
        f"{where}: pipelined {got} vs synchronous {want}"
    )
    return got["finish_reason"]


@pytest.mark.parametrize("block", [4, 16])
def test_pipelined_equals_synchronous_scripted(request, capsys, block: int) -> None:
    seeds = PROFILES[_profile(request)][2]
    stats = dict.fromkeys(SCRIPTED_STATS, 0)
    for seed in range(seeds):
        script = make_script(seed, block)
        want = drive(script, False, stats)
        got = drive(script, True, stats)
        for r in script.reqs:
            sp = r.sp
            where = (
                f"seed {seed}, block {block}, request {r.rid} ({len(r.prompt)} prompt tokens, max_tokens "
                f"{sp.max_tokens}, ignore_eos {sp.ignore_eos}, stop {sp.stop}, {len(sp.stop_token_ids or ())} "
                f"stop ids), {script.kwargs}"
            )
            reason = _compare(r, got[r.rid], want[r.rid], where)
            if reason is not None:
                stats[reason] = stats.get(reason, 0) + 1
    with capsys.disabled():
        print(f"\n[pipelined scripted, block {block}] {seeds} seeds: {stats}")
    # The runs must reach the states the pipeline has to handle, or a pass means little.
    assert stats["ahead_launches"] > 25 * seeds, stats
    for key in (
        "ahead_partial",
        "ahead_block_edges",
        "ahead_discarded",
        "ahead_declined",
        "preemptions",
        "prefix_hit_tokens",
        "decode_block_hits",
        "stop",
        "length",
        "abort",
    ):
        assert stats[key] > 0, f"the scripts never reached {key}: {stats}"
