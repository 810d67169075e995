"""Issue 19, engine side: tiny temperatures are greedy end to end (SamplingParams, sampler, engine), never
NaN probabilities that sample token 0 and report `length` (tiny Qwen3, real engine)."""

from __future__ import annotations

import pytest
from engine_helpers import check_clean

from nanovllm_tui.engine import LLM, SamplingParams

OPTS = dict(kvcache_block_size=16, max_model_len=128, num_kvcache_blocks=64)
PROMPT = "The quick brown fox"


@pytest.fixture(scope="module")
def llm(tiny_qwen3_gqa_dir) -> LLM:
    return LLM(str(tiny_qwen3_gqa_dir), **OPTS)


MIN_TEMPERATURE = 1e-5  # vLLM's _SAMPLING_EPS


def test_min_temperature_matches_the_kernels():
    from nanovllm_tui.engine.sampling_params import MIN_TEMPERATURE as PARAMS_MIN
    from nanovllm_tui.kernels.sample_ref import MIN_TEMPERATURE as KERNEL_MIN

    assert PARAMS_MIN == KERNEL_MIN == MIN_TEMPERATURE


@pytest.mark.parametrize("t", [1e-45, 1e-44, 1e-40, 1e-37, 1e-20, 9.9e-6])
def test_temperatures_below_the_threshold_are_greedy(t):
    sp = SamplingParams(temperature=t)
    assert sp.temperature == 0.0 and sp.greedy
    assert SamplingParams(temperature=MIN_TEMPERATURE).temperature == MIN_TEMPERATURE


@pytest.mark.parametrize("t", [1e-44, 1e-40, 1e-38, 1e-6])
def test_tiny_temperature_requests_give_the_greedy_tokens(llm, t):
    greedy = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    tiny = SamplingParams(temperature=t, max_tokens=8, ignore_eos=True, seed=3)
    want = llm.generate([PROMPT], greedy, use_tqdm=False)[0]
    # Batched with a sampled request, so the step takes the sampling path, not the all-greedy shortcut.
    hot = SamplingParams(temperature=1.0, max_tokens=8, ignore_eos=True, seed=5)
    got, _ = llm.generate([PROMPT, PROMPT], [tiny, hot], use_tqdm=False)
    assert got["finish_reason"] == "length" and got["token_ids"] == want["token_ids"]
    check_clean(llm)
