"""Abort storm through the streaming service: 200 requests, half aborted at random moments (before
admission, mid-prefill, mid-decode, after finish). At the end no block is used, nothing raised, and
the other half's greedy outputs equal a clean run's."""

from __future__ import annotations

import random
import threading
import time

import pytest
from engine_helpers import check_clean

from nanovllm_tui.engine import LLM, SamplingParams
from nanovllm_tui.engine.scheduling.sequence import SequenceStatus
from nanovllm_tui.engine.serving.thread_service import EngineService

pytestmark = pytest.mark.slow  # abort storm: thousands of requests

N = 200
OPTS = dict(
    kvcache_block_size=16, max_model_len=128, num_kvcache_blocks=40, max_num_seqs=16, max_num_batched_tokens=48
)  # chunked prefills and some preemption
LONG = 6  # every LONG-th request has a ~110-token prompt: its prefill spans steps, a window to abort in


def _workload(seed: int = 0):
    rng = random.Random(seed)
    shared = [rng.randrange(100, 4000) for _ in range(40)]
    prompts, params = [], []
    for i in range(N):
        n = rng.randrange(100, 110) if i % LONG == 0 else rng.randrange(1, 30)
        prompt = (shared[: rng.randrange(16, 41)] if i % 4 == 0 else []) + [rng.randrange(100, 4000) for _ in range(n)]
        prompts.append(prompt[:110])
        params.append(SamplingParams(temperature=0, max_tokens=rng.randrange(1, 12)))
    return prompts, params


def _phase(engine, request_id: str) -> str:
    """Where a request stands when its abort reaches the engine thread."""
    seq = engine.requests.get(request_id)
    if seq is None or seq.is_finished:
        return "after_finish"
    if not seq.admitted:
        return "before_admission"
    if seq.status is SequenceStatus.RUNNING and seq.num_computed_tokens < seq.num_prompt_tokens:
        return "mid_prefill"
    if seq.num_completion_tokens > 0:
        return "mid_decode"
    return "requeued"  # preempted back to the queue, or waiting for its first decode


def _abort_later(llm: LLM, h, i: int, rng: random.Random, errors: list[BaseException]) -> None:
    """Abort request i at a moment picked by i: once its prefill started (long prompts), after a random
    delay, after its first token, or after it finished (abort must then be a harmless no-op)."""
    try:
        mode = i % 3
        if i % LONG == 0:  # wait (racily: a trigger only) until its prefill has started
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                seq = llm.requests.get(h.request_id)
                if seq is not None and seq.num_computed_tokens > 0:
                    break
                time.sleep(0.0005)
        elif mode == 0:
            time.sleep(rng.random() * 0.3)
        elif mode == 1:
            h.get(timeout=30)  # after its first token (or its end)
        else:
            h.result(timeout=60)
        h.abort()
    except BaseException as exc:
        errors.append(exc)


def test_abort_storm_through_the_service(tiny_qwen3_gqa_dir):
    prompts, params = _workload()
    clean = LLM(str(tiny_qwen3_gqa_dir), **OPTS).generate(prompts, params, use_tqdm=False)

    llm = LLM(str(tiny_qwen3_gqa_dir), **OPTS)
    phases: list[str] = []
    real_abort = llm.abort_request

    def observed_abort(request_id: str) -> bool:  # runs on the engine thread: record, then really abort
        phases.append(_phase(llm, request_id))
        return real_abort(request_id)

    llm.abort_request = observed_abort
    rng = random.Random(1)
    doomed = set(rng.sample(range(N), N // 2))
    errors: list[BaseException] = []
    with EngineService(llm) as svc:
        handles = []
        for i, (p, sp) in enumerate(zip(prompts, params)):
            handles.append(svc.submit(p, sp, request_id=f"q{i}"))
            if i in doomed and i % 5 == 0 and i % LONG:
                handles[-1].abort()  # before the engine thread has even seen it

        threads = [
            threading.Thread(target=_abort_later, args=(llm, handles[i], i, rng, errors))
            for i in sorted(doomed)
            if i % 5 != 0 or i % LONG == 0
        ]
        for t in threads:
            t.start()
        results = {i: handles[i].result(timeout=120) for i in range(N) if i not in doomed}
        for t in threads:
            t.join(60)
        for i in doomed:
            r = handles[i].result(timeout=60)
            assert r.finish_reason in ("abort", "stop", "length"), r
            assert clean[i]["token_ids"][: len(r.token_ids)] == r.token_ids  # what it streamed was right
        deadline = time.monotonic() + 10
        while svc.stats().num_blocks_used and time.monotonic() < deadline:
            time.sleep(0.01)
        assert svc.stats().num_blocks_used == 0
        assert svc.fatal_error is None and not [e for e in svc.events() if e.kind in ("step_error", "fatal")]
    assert not errors, errors
    for i, r in results.items():
        assert r.token_ids == clean[i]["token_ids"] and r.finish_reason == clean[i]["finish_reason"], i
    check_clean(llm)
    seen = set(phases)
    for phase in ("before_admission", "mid_prefill", "mid_decode"):
        assert phase in seen, (phase, sorted(seen))
    assert sum(r.finish_reason == "abort" for r in (handles[i].result() for i in doomed)) >= N // 4
