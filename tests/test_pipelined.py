"""Pipelined decoding (async_scheduling): the next decode step is launched before the current one's tokens are
back. On CPU the forward is synchronous, so these tests force it on and check it changes nothing but timing."""

from __future__ import annotations

import time

import pytest
from engine_helpers import check_clean, mixed_prompts

from nanovllm_tui.engine import LLM, SamplingParams

KW = dict(kvcache_block_size=16, max_model_len=256, num_kvcache_blocks=160, max_num_seqs=8)


def _run(model_dir, async_scheduling: bool, prompts, params, **kw):
    llm = LLM(str(model_dir), async_scheduling=async_scheduling, **{**KW, **kw})
    seqs = [llm.add_request(p, sp) for p, sp in zip(prompts, params)]
    launches = 0
    run = llm.model_runner.launch

    def counted(items, after=None, keep=None):
        nonlocal launches
        launches += after is not None
        return run(items, after, keep)

    llm.model_runner.launch = counted
    while llm.has_unfinished_requests():
        llm.step()
    check_clean(llm)
    return llm, [s.completion_token_ids for s in seqs], [s.finish_reason for s in seqs], launches


def test_pipelined_greedy_equals_synchronous(tiny_qwen3_gqa_dir) -> None:
    """Different max_tokens (requests drop out of the pipeline mid-run), a stop token (a row computed ahead
    is thrown away), more requests than max_num_seqs (admissions break the pipeline), blocks filling during
    decode (hashes committed once the token is known): same tokens, same finish reasons, clean cache."""
    prompts = mixed_prompts(3)
    params = [SamplingParams(temperature=0, max_tokens=8 + 5 * (i % 7), ignore_eos=True) for i in range(len(prompts))]
    _, ref, _, _ = _run(tiny_qwen3_gqa_dir, False, prompts, params)
    stop = ref[2][3]  # a token request 2 produces: with it as a stop token, that request ends early
    params = [
        SamplingParams(temperature=0, max_tokens=sp.max_tokens, ignore_eos=True, stop_token_ids=[stop]) for sp in params
    ]
    _, want, want_reasons, sync_launches = _run(tiny_qwen3_gqa_dir, False, prompts, params)
    llm, got, reasons, launches = _run(tiny_qwen3_gqa_dir, True, prompts, params)
    assert got == want and reasons == want_reasons
    assert "stop" in reasons and "length" in reasons
    assert sync_launches == 0 and launches > 10, "the pipelined path must actually run"
    stats = llm.stats()
    assert stats.num_decode_tokens == sum(len(t) for t in got) - len(got)


def test_pipelined_prefix_cache_commits_decoded_blocks(tiny_qwen3_gqa_dir) -> None:
    """Blocks filled by pipelined decode steps are hashed once their tokens are known: a later prompt that
    repeats a finished request's prompt + output hits them, and still gives the synchronous engine's tokens."""
    prompt = mixed_prompts(5)[5]  # 33 tokens
    first = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    llm = LLM(str(tiny_qwen3_gqa_dir), async_scheduling=True, **KW)
    out = llm.generate([prompt], first, use_tqdm=False)[0]["token_ids"]
    follow = prompt + out + [7, 8, 9]
    second = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    hits_before = llm.stats().prefix_cache_hits
    got = llm.generate([follow], second, use_tqdm=False)[0]["token_ids"]
    assert llm.stats().prefix_cache_hits - hits_before == (len(prompt) + len(out)) // 16 * 16
    ref = LLM(str(tiny_qwen3_gqa_dir), async_scheduling=False, enable_prefix_caching=False, **KW)
    assert got == ref.generate([follow], second, use_tqdm=False)[0]["token_ids"]
    check_clean(llm)


def test_abort_while_a_pipelined_step_is_in_flight(tiny_qwen3_gqa_dir) -> None:
    """An abort between steps (the service's case) lands while a step is in flight: the request ends with
    "abort", its blocks are freed, and the others finish with the synchronous engine's tokens."""
    prompts = mixed_prompts(7)[:4]
    params = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
    ref = LLM(str(tiny_qwen3_gqa_dir), async_scheduling=False, **KW).generate(prompts, params, use_tqdm=False)
    llm = LLM(str(tiny_qwen3_gqa_dir), async_scheduling=True, **KW)
    seqs = [llm.add_request(p, params) for p in prompts]
    for _ in range(6):
        llm.step()
    assert llm._inflight is not None, "a decode step should be in flight"
    assert llm.abort_request(seqs[1].request_id)
    outs = []
    while llm.has_unfinished_requests():
        outs.extend(llm.step())
    assert seqs[1].finish_reason == "abort"
    for i in (0, 2, 3):
        assert seqs[i].completion_token_ids == ref[i]["token_ids"]
    check_clean(llm)


@pytest.mark.parametrize("policy", ["mixed", "prefill_first"])
def test_pipelined_with_preemption(tiny_qwen3_gqa_dir, policy: str) -> None:
    """A cache too small for every request at once: the full schedule preempts (the pipeline steps aside when
    blocks run out), and the tokens still equal the synchronous run's."""
    prompts = mixed_prompts(11)
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    kw = dict(num_kvcache_blocks=24, scheduling_policy=policy)
    _, want, _, _ = _run(tiny_qwen3_gqa_dir, False, prompts, [params] * len(prompts), **kw)
    llm, got, _, launches = _run(tiny_qwen3_gqa_dir, True, prompts, [params] * len(prompts), **kw)
    assert got == want
    assert llm.stats().num_preemptions > 0 and launches > 0


def test_service_streams_with_pipelined_steps(tiny_qwen3_gqa_dir) -> None:
    """Through EngineService (the app's path): streamed deltas add up to the synchronous engine's tokens, an
    abort mid-stream frees its blocks, and the step-stats history has no step twice."""
    from nanovllm_tui.engine.serving.thread_service import EngineService

    prompts = mixed_prompts(13)[:5]
    sp = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    want = LLM(str(tiny_qwen3_gqa_dir), async_scheduling=False, **KW).generate(prompts, sp, use_tqdm=False)
    svc = EngineService(LLM(str(tiny_qwen3_gqa_dir), async_scheduling=True, **KW))
    try:
        long = svc.submit(prompts[0], SamplingParams(temperature=0, max_tokens=200, ignore_eos=True))
        handles = [svc.submit(p, sp) for p in prompts]
        streamed = [[] for _ in handles]
        for i, h in enumerate(handles):
            for out in h:
                streamed[i].extend(out.token_ids)
        assert streamed == [w["token_ids"] for w in want]
        assert long.abort() or long.done
        assert long.result(timeout=30).finish_reason in ("abort", "length")
        deadline = time.monotonic() + 10
        while svc.stats().num_blocks_used and time.monotonic() < deadline:
            time.sleep(0.05)
        assert svc.stats().num_blocks_used == 0
        steps = [s.step for s in svc.stats_history()]
        assert steps == sorted(set(steps))
    finally:
        svc.shutdown()
