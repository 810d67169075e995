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
   A failure names its seed: drive(make_script(seed, block), True, collections.Counter()) replays it.
NANOVLLM_FUZZ=long (or --long) runs more examples and seeds.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

import pytest
import test_fuzz_scheduler as base
from fuzz_harness import VOCAB, check_engine, make_engine, next_token
from hypothesis import HealthCheck, settings
from hypothesis.stateful import rule, run_state_machine_as_test

from nanovllm_tui.engine.sampling_params import SamplingParams

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


# -- 2. scripted runs: pipelined == synchronous ----------------------------------------------------------
@dataclass
class Req:
    rid: str
    prompt: list[int]
    sp: SamplingParams
    detokenize: bool
    arrive: int  # step() calls made before it is added
    abort_after_tokens: int | None = None  # abort once it has this many tokens (same point in both runs)
    abort_at_call: int | None = None  # abort before this step() call (a different point in each run)
    continues: int = 0  # prompt length of the earlier request whose prompt + output this prompt starts with


@dataclass
class Script:
    seed: int
    kwargs: dict
    reqs: list[Req] = field(default_factory=list)


def make_script(seed: int, block: int) -> Script:
    """A random engine shape (tight cache, small budgets at times) and a request script for it."""
    rng = random.Random(seed * 1000 + block)
    max_model_len = rng.choice([48, 64, 96])
    caching = rng.random() < 0.8
    kwargs = dict(
        kvcache_block_size=block,
        max_model_len=max_model_len,
        enable_prefix_caching=caching,
        max_num_seqs=rng.choice([4, 8, 16, 16]),
        max_num_batched_tokens=rng.choice([6, 32, 256, 256]),
        scheduling_policy=rng.choice(["mixed", "mixed", "prefill_first"]),
        mixed_prefill_tokens=rng.choice([0, 0, 5, 24]),
    )
    shared_sps = [
        SamplingParams(temperature=0.8, top_k=20, top_p=0.9, max_tokens=rng.randint(5, 30)),
        SamplingParams(temperature=0, max_tokens=rng.randint(5, 30), ignore_eos=True),
    ]
    script = Script(seed, kwargs)
    prompts: list[list[int]] = []
    for i in range(rng.randint(10, 28)):
        kind = rng.random()
        arrive = 0 if rng.random() < 0.5 else rng.randint(1, 80)
        continues = 0
        if prompts and kind < 0.15:  # identical prompt: prefix-cache hits up to the last full block
            prompt = list(rng.choice(prompts))
        elif prompts and kind < 0.3:  # an earlier request's prompt and output: hits blocks its decode steps filled
            j = rng.randrange(len(script.reqs))
            src = script.reqs[j].prompt
            prompt = fake_continuation(src, rng.randint(1, max_model_len - len(src))) + [
                rng.randrange(3, VOCAB) for _ in range(rng.randint(0, 3))
            ]
            arrive = script.reqs[j].arrive + rng.randint(5, 60)
            continues = len(src)
        elif prompts and kind < 0.4:  # shared prefix, cut anywhere (often on a block edge)
            src = rng.choice(prompts)
            cut = rng.choice([len(src), rng.randint(1, len(src)), min(len(src), block * rng.randint(1, 3))])
            prompt = src[:cut] + [rng.randrange(3, VOCAB) for _ in range(rng.randint(0, 12))]
        else:
            prompt = [
                rng.randrange(3, VOCAB)
                for _ in range(rng.choice([1, 2, block - 1, block, block + 1, rng.randint(1, 30)]))
            ]
        prompt = prompt[: max_model_len - 1]
        prompts.append(prompt)
        room = max_model_len - len(prompt)
        if rng.random() < 0.15:
            sp = rng.choice(shared_sps)  # one SamplingParams object for several requests (LLM.generate's case)
            if sp.max_tokens > room:
                sp = SamplingParams(temperature=0, max_tokens=room)
        else:
            max_tokens = room if rng.random() < 0.15 else rng.randint(1, min(room, 60))
            stop_ids = rng.choice([None, None, None, list(range(3, 1500)), [rng.randrange(3, VOCAB)]])
            sp = SamplingParams(
                temperature=rng.choice([0.0, 0.0, 0.7]),
                top_k=rng.choice([-1, -1, 8]),
                top_p=rng.choice([1.0, 1.0, 0.95]),
                seed=rng.choice([None, None, rng.randrange(2**40)]),
                max_tokens=max_tokens,
                ignore_eos=rng.random() < 0.5,
                stop_token_ids=stop_ids,
                stop=rng.choice([None] * 8 + [["e"], ["\n"]]),
            )
        req = Req(
            f"r{i}",
            prompt,
            sp,
            detokenize=sp.stop is not None or rng.random() < 0.15,
            arrive=arrive,
            continues=continues,
        )
        roll = rng.random()
        if roll < 0.2:
            req.abort_after_tokens = rng.randint(0, max(0, sp.max_tokens - 1))
        elif roll < 0.28:
            req.abort_at_call = req.arrive + rng.randint(0, 30)
        script.reqs.append(req)
    # Tight: the cache holds the largest request, and at most a few more at once.
    largest = max(len(r.prompt) + r.sp.max_tokens for r in script.reqs)
    need = -(-largest // block)
    kwargs["num_kvcache_blocks"] = rng.randint(need, 4 * need)
    return script


def fake_continuation(prompt: list[int], n: int) -> list[int]:
    """The prompt and the first n tokens the fake model continues it with (stop rules aside)."""
    toks = list(prompt)
    for _ in range(n):
        tok = next_token(tuple((t, p) for p, t in enumerate(toks)), first_sample=len(toks) == len(prompt))
        if tok < 0:
            break
        toks.append(tok)
    return toks


def drive(script: Script, pipelined: bool, stats: dict) -> dict[str, dict]:
    """Run the script; per-request tokens, text and finish reason. Checks the engine after every step."""
    engine = make_engine(pipelined=pipelined, **script.kwargs)
    mode = "pipelined" if pipelined else "synchronous"
    label = f"[seed {script.seed}, {mode}, {script.kwargs}]"
    got: dict[str, dict] = {}
    seqs = {}
    by_arrival = sorted(script.reqs, key=lambda r: r.arrive)
    added = 0
    live_bound = 60 + 6 * sum(len(r.prompt) + r.sp.max_tokens for r in script.reqs)
    for call in range(live_bound):
        while added < len(by_arrival) and by_arrival[added].arrive <= call:
            r = by_arrival[added]
            added += 1
            seqs[r.rid] = engine.add_request(r.prompt, r.sp, request_id=r.rid, detokenize=r.detokenize)
            got[r.rid] = {"token_ids": [], "text": "", "finish_reason": None, "error": None}
            if r.abort_after_tokens == 0:
                assert engine.abort_request(r.rid), label
        for r in script.reqs:
            if r.abort_at_call == call:
                engine.abort_request(r.rid)
        if added == len(by_arrival) and not engine.has_unfinished_requests():
            break
        for o in engine.step():
            res = got[o.request_id]
            assert res["finish_reason"] is None, f"{label} step {call}: {o.request_id} got output after it finished"
            res["token_ids"] += o.token_ids
            res["text"] += o.text
            if o.finished:
                res["finish_reason"], res["error"] = o.finish_reason, o.error
        for r in script.reqs:  # abort at an exact token count: the same point whatever the step timing
            res = got.get(r.rid)
            if (
                r.abort_after_tokens
                and res
                and res["finish_reason"] is None
                and len(res["token_ids"]) >= r.abort_after_tokens
            ):
                assert len(res["token_ids"]) == r.abort_after_tokens, (label, call, r.rid)
                assert engine.abort_request(r.rid), (label, call, r.rid)
        try:
            check_engine(engine)
        except AssertionError as exc:
            raise AssertionError(f"{label} after step() call {call}: {exc}") from exc
    else:
        raise AssertionError(f"{label}: livelock, unfinished after {live_bound} step() calls")
    bm = engine.block_manager
    bm.check_invariants([])
    assert bm.num_used == 0 and not engine.requests and not engine.scheduler.has_work(), label
    assert engine._inflight is None, label
    if pipelined:
        r = engine.model_runner
        assert not r._queue, f"{label}: launches never collected: {[s.index for s in r._queue]}"
        for key in (
            "ahead_launches",
            "ahead_same_list",
            "ahead_partial",
            "ahead_block_edges",
            "ahead_discarded",
            "ahead_declined",
        ):
            stats[key] += getattr(r, f"num_{key}")
        stats["preemptions"] += engine.num_preemptions
        stats["prefix_hit_tokens"] += engine.prefix_cache_hits
        # Prompts that hit blocks an earlier request's (pipelined) decode steps filled and hashed.
        stats["decode_block_hits"] += sum(
            r.continues and seqs[r.rid].num_cached_tokens > r.continues for r in script.reqs
        )
    return got


@pytest.mark.parametrize("block", [4, 16])
def test_pipelined_equals_synchronous_scripted(request, capsys, block: int) -> None:
    seeds = PROFILES[_profile(request)][2]
    stats = dict.fromkeys(
        (
            "ahead_launches",
            "ahead_same_list",
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
        ),
        0,
    )
    for seed in range(seeds):
        script = make_script(seed, block)
        want = drive(script, False, stats)
        got = drive(script, True, stats)
        for r in script.reqs:
            g, w = got[r.rid], want[r.rid]
            sp = r.sp
            where = (
                f"seed {seed}, block {block}, request {r.rid} ({len(r.prompt)} prompt tokens, max_tokens "
                f"{sp.max_tokens}, ignore_eos {sp.ignore_eos}, stop {sp.stop}, {len(sp.stop_token_ids or ())} "
                f"stop ids), {script.kwargs}"
            )
            if r.abort_at_call is not None and "abort" in (g["finish_reason"], w["finish_reason"]):
                # Aborted at a step() call: each run stopped it at its own point of the same output.
                short, long_ = sorted((g["token_ids"], w["token_ids"]), key=len)
                assert long_[: len(short)] == short, f"{where}: pipelined {g} vs synchronous {w}"
                continue
            a, b = g["token_ids"], w["token_ids"]
            i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            assert a == b, f"{where}: tokens differ from index {i}:\n  pipelined   {a}\n  synchronous {b}"
            assert (g["finish_reason"], g["error"], g["text"]) == (w["finish_reason"], w["error"], w["text"]), (
                f"{where}: pipelined {g} vs synchronous {w}"
            )
            stats[g["finish_reason"]] = stats.get(g["finish_reason"], 0) + 1
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
