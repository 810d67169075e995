"""Greedy output of the engine equals transformers' greedy generate, whatever the scheduling does."""

from __future__ import annotations

import pytest
from engine_helpers import check_clean, hf_greedy, mixed_prompts

from nanovllm_tui.engine import LLM, SamplingParams

pytestmark = pytest.mark.slow  # transformers oracles: each case loads transformers and the demo model

MAX_NEW = 12
PROMPTS = mixed_prompts()

# name -> (engine kwargs, what stats() must show happened)
CASES = {
    "mixed": (dict(scheduling_policy="mixed"), None),
    "prefill_first": (dict(scheduling_policy="prefill_first"), None),
    "no_prefix_cache": (dict(enable_prefix_caching=False), None),
    "prefix_hits": (dict(), "hit"),
    "block_256": (dict(kvcache_block_size=256), None),
    "preempt": (dict(num_kvcache_blocks=8, max_num_batched_tokens=64), "preempt"),
    "preempt_prefill_first": (dict(num_kvcache_blocks=6, scheduling_policy="prefill_first"), "preempt"),
    "chunked": (dict(max_num_batched_tokens=24), "chunk"),
}


def _run(model_dir, **kwargs):
    opts = dict(kvcache_block_size=16, max_model_len=128, num_kvcache_blocks=256)
    opts.update(kwargs)
    if opts["kvcache_block_size"] == 256 and opts["num_kvcache_blocks"] == 256:
        opts["num_kvcache_blocks"] = 16
    llm = LLM(str(model_dir), **opts)
    outs = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=MAX_NEW), use_tqdm=False)
    return llm, [o["token_ids"] for o in outs]


def _check(llm: LLM, expect: str | None) -> None:
    s = llm.stats()
    if expect == "hit":
        assert s.prefix_cache_hits >= 32, s
    elif expect == "preempt":
        assert s.num_preemptions > 0, s
    elif expect == "chunk":
        assert s.num_chunked_prefills > 0, s
    check_clean(llm)


@pytest.fixture(scope="module")
def tiny_reference(tiny_qwen3_dir):
    return tiny_qwen3_dir, hf_greedy(tiny_qwen3_dir, PROMPTS, MAX_NEW)


@pytest.fixture(scope="module")
def smollm2_reference(demo_model_dir):
    return demo_model_dir, hf_greedy(demo_model_dir, PROMPTS, MAX_NEW)


@pytest.mark.parametrize("case", sorted(CASES))
def test_tiny_qwen3_matches_transformers(tiny_reference, case):
    model_dir, ref = tiny_reference
    kwargs, expect = CASES[case]
    llm, got = _run(model_dir, **kwargs)
    assert got == ref
    _check(llm, expect)


@pytest.mark.parametrize("case", ["mixed", "prefill_first", "no_prefix_cache", "block_256", "preempt", "chunked"])
def test_smollm2_matches_transformers(smollm2_reference, case):
    model_dir, ref = smollm2_reference
    kwargs, expect = CASES[case]
    llm, got = _run(model_dir, **kwargs)
    assert got == ref
    _check(llm, expect)
