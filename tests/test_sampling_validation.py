"""Sampling (seeded reproducibility, top-k=1 == greedy, stop conditions) and request validation."""

from __future__ import annotations

import pytest
from engine_helpers import check_clean

from nanovllm_tui.engine import LLM, SamplingParams


@pytest.fixture(scope="module")
def llm(tiny_qwen3_gqa_dir):
    return LLM(str(tiny_qwen3_gqa_dir), kvcache_block_size=16, max_model_len=128, num_kvcache_blocks=64)


PROMPT = [101, 202, 303, 404, 505, 606, 707]


def test_seeded_runs_reproduce_across_batch_mixes(llm):
    sp = SamplingParams(temperature=1.0, top_p=0.9, top_k=50, max_tokens=16, seed=1234)
    alone = llm.generate([PROMPT], sp, use_tqdm=False)[0]["token_ids"]
    others = [[11 * i + 3 for i in range(n)] for n in (3, 20, 9)]
    mixed = llm.generate(
        [*others[:1], PROMPT, *others[1:]],
        [SamplingParams(temperature=1.0, max_tokens=16), sp, *[SamplingParams(temperature=0.7, max_tokens=16)] * 2],
        use_tqdm=False,
    )
    assert mixed[1]["token_ids"] == alone
    # And a different seed gives a different sample (with overwhelming probability at temperature 1).
    other = llm.generate([PROMPT], SamplingParams(temperature=1.0, max_tokens=16, seed=99), use_tqdm=False)
    assert other[0]["token_ids"] != alone
    check_clean(llm)


def test_top_k_1_equals_greedy(llm):
    greedy = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=12), use_tqdm=False)
    top1 = llm.generate([PROMPT], SamplingParams(temperature=0.8, top_k=1, max_tokens=12), use_tqdm=False)
    assert top1[0]["token_ids"] == greedy[0]["token_ids"]


def test_stop_token_ids_and_max_tokens(llm):
    greedy = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=12), use_tqdm=False)[0]
    assert greedy["finish_reason"] == "length" and len(greedy["token_ids"]) == 12
    stop_at = greedy["token_ids"][4]
    first = greedy["token_ids"].index(stop_at)
    out = llm.generate(
        [PROMPT], SamplingParams(temperature=0, max_tokens=12, stop_token_ids=[stop_at]), use_tqdm=False
    )[0]
    assert out["finish_reason"] == "stop" and out["token_ids"] == greedy["token_ids"][: first + 1]


def test_stop_string_is_trimmed(llm):
    greedy = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=12), use_tqdm=False)[0]
    text = llm.tokenizer.decode(greedy["token_ids"], skip_special_tokens=True)
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    out = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=12, stop=[stop]), use_tqdm=False)[0]
    assert out["finish_reason"] == "stop"
    assert out["text"] == text[: text.index(stop)]


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(temperature=-1), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(top_p=0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=0), "top_k"),
        (dict(max_tokens=0), "max_tokens"),
        (dict(seed=1.5), "seed"),
    ],
)
def test_bad_sampling_values_raise(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        SamplingParams(**kwargs)


def test_bad_requests_raise_value_error(llm):
    with pytest.raises(ValueError, match="empty"):
        llm.generate([[]], SamplingParams(max_tokens=4), use_tqdm=False)
    with pytest.raises(ValueError, match="max_model_len=128"):
        llm.generate([[5] * 100], SamplingParams(max_tokens=29), use_tqdm=False)
    with pytest.raises(ValueError, match="token ids"):
        llm.generate([[10**9]], SamplingParams(max_tokens=4), use_tqdm=False)
    check_clean(llm)


def test_bad_engine_options_raise(tiny_qwen3_gqa_dir):
    with pytest.raises(ValueError, match="power of two"):
        LLM(str(tiny_qwen3_gqa_dir), kvcache_block_size=24)
    with pytest.raises(ValueError, match="scheduling_policy"):
        LLM(str(tiny_qwen3_gqa_dir), scheduling_policy="fifo")
    with pytest.raises(TypeError, match="unknown engine option"):
        LLM(str(tiny_qwen3_gqa_dir), max_num_seq=3)
    with pytest.raises(ValueError, match="does not exist"):
        LLM("/nonexistent/model")
