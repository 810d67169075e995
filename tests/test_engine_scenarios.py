"""Regression scenarios from nano-vllm's history: prefix-cache edge cases, block boundaries, preemption, oversize requests."""

from __future__ import annotations

import random

import pytest
from engine_helpers import check_clean, hf_greedy

from nanovllm_tui.engine import LLM, SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=6)
BS = 16


@pytest.fixture(scope="module")
def model_dir(tiny_qwen3_gqa_dir):
    return tiny_qwen3_gqa_dir


def _llm(model_dir, **kw) -> LLM:
    opts = dict(kvcache_block_size=BS, max_model_len=256, num_kvcache_blocks=64)
    opts.update(kw)
    return LLM(str(model_dir), **opts)


def _ids(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(100, 4000) for _ in range(n)]


def test_full_block_prompt_twice_still_computes_a_token(model_dir):
    llm = _llm(model_dir)
    prompt = _ids(2 * BS, 1)
    first = llm.generate([prompt], GREEDY, use_tqdm=False)[0]["token_ids"]
    before = llm.stats()
    second = llm.generate([prompt], GREEDY, use_tqdm=False)[0]["token_ids"]
    after = llm.stats()
    assert first == second
    # Only the first block may hit: the last block holds the last prompt token, which must be computed.
    assert after.prefix_cache_hits - before.prefix_cache_hits == BS
    assert after.num_prefill_tokens - before.num_prefill_tokens == BS
    check_clean(llm)


def test_three_identical_prompts_in_a_row_all_hit(model_dir):
    llm = _llm(model_dir)
    prompt = _ids(3 * BS + 5, 2)
    outs = []
    for i in range(3):
        before = llm.stats().prefix_cache_hits
        outs.append(llm.generate([prompt], GREEDY, use_tqdm=False)[0]["token_ids"])
        hit = llm.stats().prefix_cache_hits - before
        assert hit == (0 if i == 0 else 3 * BS)
    assert outs[0] == outs[1] == outs[2]
    check_clean(llm)


def test_identical_prompts_in_one_step_share_blocks(model_dir):
    llm = _llm(model_dir)
    prompt = _ids(2 * BS + 3, 3)
    outs = llm.generate([prompt, prompt, prompt], GREEDY, use_tqdm=False)
    assert outs[0]["token_ids"] == outs[1]["token_ids"] == outs[2]["token_ids"]
    assert llm.stats().prefix_cache_hits == 2 * (2 * BS)
    check_clean(llm)


def test_reused_block_never_hits_its_old_hash(model_dir):
    # 4 blocks: the first prompt's cached blocks must be evicted and rewritten by the second.
    llm = _llm(model_dir, num_kvcache_blocks=4, max_model_len=64)
    a, b = _ids(2 * BS + 1, 4), _ids(2 * BS + 1, 5)
    ref_a = llm.generate([a], GREEDY, use_tqdm=False)[0]["token_ids"]
    llm.generate([b], GREEDY, use_tqdm=False)
    llm.generate([_ids(3 * BS, 6)], SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)
    before = llm.stats().prefix_cache_hits
    again = llm.generate([a], GREEDY, use_tqdm=False)[0]["token_ids"]
    assert llm.stats().prefix_cache_hits == before  # every block of `a` was evicted
    assert again == ref_a
    bm = llm.block_manager
    for h, block_id in bm.hash_to_block.items():
        assert bm.blocks[block_id].hash == h
    check_clean(llm)


def test_same_content_at_another_offset_never_hits(model_dir):
    llm = _llm(model_dir)
    block = _ids(BS, 7)
    llm.generate([block + _ids(3, 8)], GREEDY, use_tqdm=False)
    before = llm.stats().prefix_cache_hits
    # The same 16 tokens, now as the second block: the chain hash differs, so no hit.
    llm.generate([_ids(BS, 9) + block + _ids(3, 10)], GREEDY, use_tqdm=False)
    assert llm.stats().prefix_cache_hits == before
    check_clean(llm)


@pytest.mark.parametrize("length", [BS - 1, BS, BS + 1])
def test_decode_across_block_boundaries(model_dir, length):
    prompt = _ids(length, 11 + length)
    ref = hf_greedy(model_dir, [prompt], 20)[0]
    llm = _llm(model_dir)
    got = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=20), use_tqdm=False)[0]["token_ids"]
    assert got == ref
    check_clean(llm)


def test_preemption_at_block_boundary_then_resume(model_dir):
    # Two requests of exactly BS+1 tokens each fill 4 blocks; the first decode needing a 5th block
    # preempts the newer one, which later resumes (hitting its own cached full block).
    prompts = [_ids(BS + 1, 20), _ids(BS + 1, 21)]
    ref = hf_greedy(model_dir, prompts, 2 * BS)
    llm = _llm(model_dir, num_kvcache_blocks=4, max_model_len=64)
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=2 * BS), use_tqdm=False)
    assert [o["token_ids"] for o in outs] == ref
    s = llm.stats()
    assert s.num_preemptions >= 1 and s.prefix_cache_hits > 0
    check_clean(llm)


def test_preemption_prefix_hits_and_chunking_under_64_requests(model_dir):
    rng = random.Random(0)
    system = _ids(2 * BS, 30)
    prompts = [system + _ids(rng.randrange(1, 40), 100 + i) for i in range(64)]
    sp = SamplingParams(temperature=0, max_tokens=8)
    llm = _llm(model_dir, num_kvcache_blocks=24, max_num_batched_tokens=48, max_model_len=128)
    got = [o["token_ids"] for o in llm.generate(prompts, sp, use_tqdm=False)]
    s = llm.stats()
    assert s.num_preemptions > 0 and s.prefix_cache_hits > 0 and s.num_chunked_prefills > 0, s
    roomy = _llm(model_dir, num_kvcache_blocks=512, enable_prefix_caching=False, max_model_len=128)
    assert got == [o["token_ids"] for o in roomy.generate(prompts, sp, use_tqdm=False)]
    check_clean(llm)


def test_oversize_request_errors_while_others_finish(model_dir):
    llm = _llm(model_dir, num_kvcache_blocks=4, max_model_len=256)
    prompts = [_ids(10, 40), _ids(5 * BS, 41), _ids(12, 42)]
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)
    assert outs[1]["finish_reason"] == "error" and "KV cache" in outs[1]["error"]
    assert outs[0]["finish_reason"] == outs[2]["finish_reason"] == "length"
    assert len(outs[0]["token_ids"]) == len(outs[2]["token_ids"]) == 4
    check_clean(llm)


def test_mixed_prefill_cap_bounds_prompt_tokens_beside_decodes(model_dir):
    """mixed policy: a step that carries decodes gives prompts at most mixed_prefill_tokens; a step without
    decodes may use the whole budget; the capped run produces the same greedy tokens as an uncapped one."""
    prompts = [_ids(30, 50), _ids(100, 51), _ids(90, 52)]
    sp = SamplingParams(temperature=0, max_tokens=12)
    results = {}
    for cap in (0, 24):
        llm = _llm(model_dir, max_num_batched_tokens=64, mixed_prefill_tokens=cap)
        engine = llm
        first = engine.add_request(prompts[0], sp, detokenize=False)
        steps = []
        while engine.has_unfinished_requests():
            if first.num_completion_tokens == 2 and len(engine.requests) == 1:  # prompts arrive mid-decode
                later = [engine.add_request(p, sp, detokenize=False) for p in prompts[1:]]
            engine.step()
            steps.append(engine.last_step)
        results[cap] = [first.completion_token_ids] + [s.completion_token_ids for s in later]
        beside = [s.num_prefill_tokens for s in steps if s.num_decode_tokens]
        alone = [s.num_prefill_tokens for s in steps if not s.num_decode_tokens]
        if cap:
            assert beside and max(beside) <= cap, beside
        else:
            assert max(beside) > 24, beside  # uncapped: a new prompt takes what the budget leaves
        assert max(alone) > 24, alone  # the first prompt, alone in its step, is not capped
        check_clean(llm)
    assert results[24] == results[0]
