"""Stateful fuzzing of the real scheduler + block manager + engine step, over a fake paged model.

Rules add requests (block-boundary lengths, shared prefixes, identical prompts, stop strings,
poisoned prompts), step, abort any request (live, finished or unknown), switch policy and make the
next forward fail; caches of a few blocks and budgets of a few tokens force chunking, preemption
and eviction. After every rule: the pool and queue invariants hold; at the end of each run every
request finished within a bounded number of steps and produced what it produces alone.

Profiles: CI (default) runs 2,000 derandomized examples of up to 25 rules (~42,000 rule applications);
`pytest --long` (or NANOVLLM_FUZZ=long) runs 4,000 fresh random examples of up to 80 rules; the count
reached is printed. See docs/ROBUSTNESS.md.
"""

from __future__ import annotations

import os

import pytest
from fuzz_harness import EOS, POISON, VOCAB, check_engine, live_seqs, make_engine, run_alone
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, precondition, rule

from nanovllm_tui.engine.sampling_params import SamplingParams

pytestmark = pytest.mark.slow  # 2,000 fuzz examples

BLOCK = 16
PROFILES = {
    "ci": dict(max_examples=2000, stateful_step_count=25),
    "long": dict(max_examples=4000, stateful_step_count=80),
}
BOUNDARY_LENGTHS = [1, 2, 15, 16, 17, 31, 32, 33, 47, 48, 49]
token = st.integers(min_value=3, max_value=VOCAB - 1)


class EngineMachine(RuleBasedStateMachine):
    """One engine of a random tiny shape; the model below it is PagedFakeRunner (tests/fuzz_harness.py)."""

    request_ids = Bundle("request_ids")
    pipelined = False  # True: PipelinedFakeEngine with async_scheduling (tests/test_fuzz_pipelined.py)

    def __init__(self):
        super().__init__()
        self.engine = None
        self.kwargs: dict = {}
        self.prompts: list[list[int]] = []
        self.meta: dict[str, tuple] = {}  # request id -> (prompt, sp, detokenize)
        self.got: dict[str, dict] = {}  # request id -> accumulated outputs
        self.failed_ids: set[str] = set()  # errored because an injected forward failure hit their step
        self.aborted_ids: set[str] = set()
        self.next_id = 0
        self.rule_count = 0

    @initialize(
        num_blocks=st.sampled_from([1, 2, 3, 4, 5, 6, 8, 12]),
        budget=st.sampled_from([1, 2, 5, 16, 17, 33, 64]),
        max_num_seqs=st.integers(1, 4),
        caching=st.sampled_from([True, True, False]),
        policy=st.sampled_from(["mixed", "prefill_first"]),
        max_model_len=st.sampled_from([64, 100]),
        prompt_cap=st.sampled_from([0, 0, 1, 3, 16]),
    )
    def build(self, num_blocks, budget, max_num_seqs, caching, policy, max_model_len, prompt_cap):
        self.kwargs = dict(
            kvcache_block_size=BLOCK,
            num_kvcache_blocks=num_blocks,
            max_num_batched_tokens=budget,
            max_num_seqs=max_num_seqs,
            enable_prefix_caching=caching,
            scheduling_policy=policy,
            max_model_len=max_model_len,
            mixed_prefill_tokens=prompt_cap,
        )
        self.engine = make_engine(pipelined=self.pipelined, **self.kwargs)

    # -- rules ---------------------------------------------------------------------------------
    @rule(
        target=request_ids,
        data=st.data(),
        kind=st.sampled_from(["random", "boundary", "shared_prefix", "identical", "pressure"] * 3 + ["poison"]),
        max_tokens=st.integers(1, 24),
        ignore_eos=st.booleans(),
        stop=st.sampled_from([None, None, None, ["e"], ["the", "x"], ["\n"]]),
        stop_ids=st.sampled_from([None, None, [5, 6], list(range(3, 3000))]),
    )
    def add(self, data, kind, max_tokens, ignore_eos, stop, stop_ids):
        self.rule_count += 1
        if kind == "identical" and self.prompts:
            prompt = list(data.draw(st.sampled_from(self.prompts)))
        elif kind == "shared_prefix" and self.prompts:
            base = data.draw(st.sampled_from(self.prompts))
            cut = data.draw(st.integers(1, len(base)))
            prompt = base[:cut] + data.draw(st.lists(token, min_size=0, max_size=20))
        elif kind == "pressure":  # fits alone, but two of them overflow the cache: preemption
            cap = min(self.engine.block_manager.num_blocks * BLOCK, self.engine.config.max_model_len)
            total = data.draw(st.integers(max(2, cap // 2), max(2, cap)))
            n = data.draw(st.integers(1, min(BLOCK, total - 1)))  # admitted early, grows late
            prompt = data.draw(st.lists(token, min_size=n, max_size=n))
            max_tokens, ignore_eos = total - n, True
        else:
            n = data.draw(st.sampled_from(BOUNDARY_LENGTHS) if kind == "boundary" else st.integers(1, 48))
            prompt = data.draw(st.lists(token, min_size=n, max_size=n))
            if kind == "poison":
                prompt[0] = POISON
        sp = SamplingParams(
            temperature=0, max_tokens=max_tokens, ignore_eos=ignore_eos, stop=stop, stop_token_ids=stop_ids
        )
        detok = stop is not None or data.draw(st.booleans())
        return self._submit(prompt, sp, detok)

    @precondition(lambda self: self.failed_ids or self.aborted_ids)
    @rule(target=request_ids, data=st.data())
    def resubmit_cut_short(self, data):
        """Re-send a failed or aborted request's prompt: whatever it left in the cache must not leak into it."""
        self.rule_count += 1
        rid = data.draw(st.sampled_from(sorted(self.failed_ids | self.aborted_ids)))
        return self._submit(*self.meta[rid])

    def _submit(self, prompt: list[int], sp: SamplingParams, detok: bool) -> str:
        rid = f"r{self.next_id}"
        self.next_id += 1
        if len(prompt) + sp.max_tokens > self.engine.config.max_model_len:
            with pytest.raises(ValueError, match="max_model_len"):
                self.engine.add_request(prompt, sp, request_id=rid, detokenize=detok)
            return rid  # unknown to the engine: aborting it must be a no-op
        self.engine.add_request(prompt, sp, request_id=rid, detokenize=detok)
        self.prompts.append(prompt)
        self.meta[rid] = (prompt, sp, detok)
        return rid

    @rule()
    def step(self):
        self.rule_count += 1
        self._step_once()

    @rule(rid=request_ids)
    def abort(self, rid):
        self.rule_count += 1
        seq = self.engine.requests.get(rid)
        live = seq is not None and not seq.is_finished
        assert self.engine.abort_request(rid) == live
        if live:
            self.aborted_ids.add(rid)
            assert not seq.block_table

    @rule(policy=st.sampled_from(["mixed", "prefill_first"]))
    def switch_policy(self, policy):
        self.rule_count += 1
        self.engine.set_scheduling_policy(policy)

    @rule()
    def fail_next_forward(self):
        self.rule_count += 1
        self.engine.model_runner.fail_next = True

    @rule()
    def drain(self):
        self.rule_count += 1
        self._drain()

    @invariant()
    def pool_and_queues_consistent(self):
        if self.engine is not None:
            check_engine(self.engine)

    # -- helpers -------------------------------------------------------------------------------
    def _step_once(self) -> None:
        outs = self.engine.step()
        for o in outs:
            r = self.got.setdefault(o.request_id, {"token_ids": [], "text": "", "finish_reason": None})
            assert r["finish_reason"] is None, f"{o.request_id} got output after it finished"
            r["token_ids"] += o.token_ids
            r["text"] += o.text
            if o.finished:
                r["finish_reason"], r["error"] = o.finish_reason, o.error
                if o.error and "FakeStepError" in o.error:
                    self.failed_ids.add(o.request_id)

    def _drain(self) -> None:
        """Step until idle within a bound: every admitted request ends (no livelock)."""
        live = list(live_seqs(self.engine))
        bound = sum(s.num_tokens + s.sampling_params.max_tokens + 2 for s in live) * (len(live) + 1) + 10
        idle = 0
        for _ in range(bound):
            if not self.engine.has_unfinished_requests():
                return
            self._step_once()
            # Nothing changes between steps while draining: a step that schedules nothing will repeat forever.
            idle = idle + 1 if self.engine.last_step.num_seqs == 0 else 0
            assert idle < 3, f"livelock: {len(live_seqs(self.engine))} requests left but nothing schedulable"
        raise AssertionError(
            f"livelock: {len(live_seqs(self.engine))} requests unfinished after {bound} steps "
            f"(policy {self.engine.scheduler.policy}, {self.kwargs})"
        )

    def teardown(self):
        if self.engine is None:
            return
        self.engine.model_runner.fail_next = False
        self._drain()
        check_engine(self.engine)
        bm = self.engine.block_manager
        assert bm.num_used == 0 and not self.engine.requests
        alone_kwargs = dict(self.kwargs, scheduling_policy="mixed")
        for rid, (prompt, sp, detok) in self.meta.items():
            r = self.got[rid]
            assert r["finish_reason"] in ("stop", "length", "abort", "error"), (rid, r)
            alone = run_alone(alone_kwargs, prompt, sp, detok)
            if rid in self.aborted_ids or rid in self.failed_ids:
                # Cut short on purpose: what it produced must still be the start of its solo output.
                assert alone["token_ids"][: len(r["token_ids"])] == r["token_ids"], rid
                assert r["finish_reason"] == ("abort" if rid in self.aborted_ids else "error")
                continue
            assert r["token_ids"] == alone["token_ids"], f"{rid}: crowd output differs from solo output"
            assert r["text"] == alone["text"], rid
            assert r["finish_reason"] == alone["finish_reason"], (rid, r, alone)
            if r["token_ids"] and r["finish_reason"] == "stop" and not sp.stop:
                assert r["token_ids"][-1] in ((EOS,) if not sp.ignore_eos else ()) + tuple(sp.stop_token_ids or ())
        e = self.engine
        for key, value in (
            ("rules", self.rule_count),
            ("preemptions", e.num_preemptions),
            ("prefix_hit_tokens", e.prefix_cache_hits),
            ("chunked_prefills", e.num_chunked_prefills),
            ("aborted", len(self.aborted_ids)),
            ("failed_forward", len(self.failed_ids)),
            ("errored", sum(r["finish_reason"] == "error" for r in self.got.values())),
            ("requests", len(self.meta)),
        ):
            COVERAGE[key] = COVERAGE.get(key, 0) + value


COVERAGE: dict[str, int] = {}  # what the run reached, summed over examples and printed by the test


def _profile() -> str:
    return os.environ.get("NANOVLLM_FUZZ", "ci")


def test_fuzz_engine_scheduler(request, capsys):
    name = "long" if request.config.getoption("--long", default=False) else _profile()
    COVERAGE.clear()
    EngineMachine.TestCase.settings = settings(
        deadline=None,
        derandomize=name == "ci",
        print_blob=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
        **PROFILES[name],
    )
    EngineMachine.TestCase().runTest()
    with capsys.disabled():
        print(f"\n[fuzz profile {name}] {PROFILES[name]['max_examples']} examples: {COVERAGE}")
    # The search must reach the hard states, or a pass means little.
    for key in ("preemptions", "prefix_hit_tokens", "chunked_prefills", "aborted", "failed_forward", "errored"):
        assert COVERAGE.get(key, 0) > 0, f"the fuzzer never reached {key}: {COVERAGE}"
