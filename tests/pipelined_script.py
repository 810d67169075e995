"""Scripted runs for tests/test_fuzz_pipelined.py: a random engine shape and request script per seed (make_script),
driven through a fake-model engine pipelined or synchronously (drive).

A failure names its seed: drive(make_script(seed, block), True, collections.Counter()) replays it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from fuzz_harness import VOCAB, check_engine, make_engine, next_token

from nanovllm_tui.engine.sampling_params import SamplingParams

AHEAD_STATS = (
    "ahead_launches",
    "ahead_same_list",
    "ahead_partial",
    "ahead_block_edges",
    "ahead_discarded",
    "ahead_declined",
)


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
        prompt, arrive, continues = _make_prompt(rng, kind, arrive, script, prompts, block, max_model_len)
        prompts.append(prompt)
        sp = _make_params(rng, max_model_len - len(prompt), shared_sps)
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


def _make_prompt(
    rng: random.Random,
    kind: float,
    arrive: int,
    script: Script,
    prompts: list[list[int]],
    block: int,
    max_model_len: int,
) -> tuple[list[int], int, int]:
    """(prompt, arrival, continues) of the next request; `kind` picks how it relates to earlier prompts."""
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
            rng.randrange(3, VOCAB) for _ in range(rng.choice([1, 2, block - 1, block, block + 1, rng.randint(1, 30)]))
        ]
    return prompt[: max_model_len - 1], arrive, continues


def _make_params(rng: random.Random, room: int, shared_sps: list[SamplingParams]) -> SamplingParams:
    """Sampling parameters for a request with `room` tokens left in max_model_len."""
    if rng.random() < 0.15:
        sp = rng.choice(shared_sps)  # one SamplingParams object for several requests (LLM.generate's case)
        if sp.max_tokens > room:
            sp = SamplingParams(temperature=0, max_tokens=room)
        return sp
    max_tokens = room if rng.random() < 0.15 else rng.randint(1, min(room, 60))
    stop_ids = rng.choice([None, None, None, list(range(3, 1500)), [rng.randrange(3, VOCAB)]])
    return SamplingParams(
        temperature=rng.choice([0.0, 0.0, 0.7]),
        top_k=rng.choice([-1, -1, 8]),
        top_p=rng.choice([1.0, 1.0, 0.95]),
        seed=rng.choice([None, None, rng.randrange(2**40)]),
        max_tokens=max_tokens,
        ignore_eos=rng.random() < 0.5,
        stop_token_ids=stop_ids,
        stop=rng.choice([None] * 8 + [["e"], ["\n"]]),
    )


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
    seqs: dict[str, Any] = {}
    _run(engine, script, label, got, seqs)
    bm = engine.block_manager
    bm.check_invariants([])
    assert bm.num_used == 0 and not engine.requests and not engine.scheduler.has_work(), label
    assert engine._inflight is None, label
    if pipelined:
        r = engine.model_runner
        assert not r._queue, f"{label}: launches never collected: {[s.index for s in r._queue]}"
        for key in AHEAD_STATS:
            stats[key] += getattr(r, f"num_{key}")
        stats["preemptions"] += engine.num_preemptions
        stats["prefix_hit_tokens"] += engine.prefix_cache_hits
        # Prompts that hit blocks an earlier request's (pipelined) decode steps filled and hashed.
        stats["decode_block_hits"] += sum(
            r.continues and seqs[r.rid].num_cached_tokens > r.continues for r in script.reqs
        )
    return got


def _run(engine: Any, script: Script, label: str, got: dict[str, dict], seqs: dict[str, Any]) -> None:
    """step() until every request has finished (arrivals and aborts as scripted); fails on a livelock."""
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
            return
        _step(engine, script, label, call, got)
        try:
            check_engine(engine)
        except AssertionError as exc:
            raise AssertionError(f"{label} after step() call {call}: {exc}") from exc
    raise AssertionError(f"{label}: livelock, unfinished after {live_bound} step() calls")


def _step(engine: Any, script: Script, label: str, call: int, got: dict[str, dict]) -> None:
    """One step() call: collect its outputs, then abort requests that reached their scripted token count."""
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
