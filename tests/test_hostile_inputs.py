"""Hostile inputs through the engine and the streaming service (tiny Qwen3, real tokenizer): empty and
whitespace prompts, a 1 MB prompt, lone surrogates, control characters and ANSI escapes, extreme
sampling values, thousands of stop strings. Each is a clean ValueError or a normal completion; none
leaks a block or stops the engine. (The app's inert rendering of escapes is tests/test_app.py.)"""

from __future__ import annotations

import pytest
from engine_helpers import check_clean

from nanovllm_tui.engine import LLM, SamplingParams
from nanovllm_tui.engine.serving.thread_service import EngineService

OPTS = dict(kvcache_block_size=16, max_model_len=128, num_kvcache_blocks=64)
GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
VALID_ODD_PROMPTS = {
    "spaces": "   ",
    "newline_tab": "\n\t",
    "controls": "\x00\x01\x02\x07\x08\x7f end",
    "ansi_csi": "\x1b[31mred\x1b[0m \x1b[2J\x1b[H",
    "ansi_osc_title": "\x1b]0;pwned\x07 after",
    "c1_csi": "\x9b31m eight-bit",
    "zero_width_bidi": "\u200b\u202e\ufeffabc",
    "replacement_char": "\ufffd\ufffd",
}
BAD_PROMPTS = {
    "empty": ("", "prompt is empty"),
    "lone_high_surrogate": ("\ud800", "not valid Unicode"),
    "lone_low_surrogate_inside": ("ok \udfff ok", "not valid Unicode"),
    "one_megabyte": ("hello world " * 87382, "max_model_len=128"),
    "too_many_tokens": ("word " * 200, "exceeds max_model_len=128"),
    "bytes": (b"hello", "prompt must be a string"),
    "none": (None, "prompt must be a string"),
}
BAD_PARAMS = {
    "max_tokens_0": (dict(max_tokens=0), "max_tokens=0"),
    "max_tokens_negative": (dict(max_tokens=-5), "max_tokens=-5"),
    "temperature_nan": (dict(temperature=float("nan")), "temperature"),
    "temperature_inf": (dict(temperature=float("inf")), "temperature"),
    "temperature_negative": (dict(temperature=-1.0), "temperature"),
    "top_p_zero": (dict(top_p=0.0), "top_p"),
    "top_k_zero": (dict(top_k=0), "top_k"),
    "seed_float": (dict(seed=1.5), "seed"),
    "seed_beyond_64_bits": (dict(seed=2**200), "seed=.* must be a 64-bit integer"),
    "stop_too_long": (dict(stop=["x" * 5000]), "at most 1024"),
    "stop_not_str": (dict(stop=[1, 2]), "stop must be"),
}


@pytest.fixture(scope="module")
def llm(tiny_qwen3_gqa_dir) -> LLM:
    return LLM(str(tiny_qwen3_gqa_dir), **OPTS)


def _gen(llm: LLM, prompt, sp: SamplingParams) -> dict:
    out = llm.generate([prompt], sp, use_tqdm=False)[0]
    check_clean(llm)
    return out


@pytest.mark.parametrize("name", sorted(VALID_ODD_PROMPTS))
def test_odd_but_valid_prompts_complete(llm, name):
    prompt = VALID_ODD_PROMPTS[name]
    assert llm.tokenize(prompt), "a non-empty prompt must tokenize to at least one token"
    out = _gen(llm, prompt, GREEDY)
    assert out["finish_reason"] == "length" and len(out["token_ids"]) == 8
    assert isinstance(out["text"], str)


@pytest.mark.parametrize("name", sorted(BAD_PROMPTS))
def test_bad_prompts_raise_one_line_value_error(llm, name):
    prompt, needle = BAD_PROMPTS[name]
    with pytest.raises(ValueError, match=needle) as info:
        llm.add_request(prompt, GREEDY)
    assert "\n" not in str(info.value)
    assert not llm.has_unfinished_requests()
    check_clean(llm)


def test_megabyte_prompt_is_rejected_without_tokenizing(llm, monkeypatch):
    """Tokenizing 1 MB takes seconds; the character-count bound rejects it before the tokenizer runs."""

    def encode(*args, **kwargs):
        raise AssertionError("the tokenizer ran on a prompt that cannot fit")

    monkeypatch.setattr(llm.tokenizer, "encode", encode)
    with pytest.raises(ValueError, match="characters, more than max_model_len=128 tokens can hold"):
        llm.add_request("x" * (1 << 20), GREEDY)


@pytest.mark.parametrize("name", sorted(BAD_PARAMS))
def test_bad_sampling_values_raise(name):
    kwargs, needle = BAD_PARAMS[name]
    with pytest.raises(ValueError, match=needle):
        SamplingParams(**kwargs)


def test_huge_max_tokens_names_max_model_len(llm):
    with pytest.raises(ValueError, match=r"max_tokens \(1000000000000\).*max_model_len=128"):
        llm.add_request("hi", SamplingParams(max_tokens=10**12))


def test_extreme_sampling_values_run_and_degenerate_to_greedy(llm):
    prompt = "The quick brown fox"
    greedy = _gen(llm, prompt, GREEDY)["token_ids"]
    near_zero_t = _gen(llm, prompt, SamplingParams(temperature=1e-9, max_tokens=8, ignore_eos=True))
    assert near_zero_t["token_ids"] == greedy  # softmax(logits / 1e-9) is one-hot on the argmax
    tiny_top_p = _gen(llm, prompt, SamplingParams(temperature=1.0, top_p=1e-9, max_tokens=8, ignore_eos=True))
    assert tiny_top_p["token_ids"] == greedy  # top_p keeps only the most likely token
    hot = _gen(llm, prompt, SamplingParams(temperature=1e9, max_tokens=8, ignore_eos=True, seed=1))
    vocab = llm.config.hf_config.vocab_size
    assert hot["finish_reason"] == "length" and all(0 <= t < vocab for t in hot["token_ids"])
    hot_top_k1 = _gen(llm, prompt, SamplingParams(temperature=1e9, top_k=1, max_tokens=8, ignore_eos=True))
    assert hot_top_k1["token_ids"] == greedy


@pytest.mark.parametrize("seed", [-1, -(2**63), 2**64 - 1])
def test_negative_and_huge_seeds_are_deterministic(llm, seed):
    sp = SamplingParams(temperature=1.0, max_tokens=8, ignore_eos=True, seed=seed)
    first = _gen(llm, "Once upon a time", sp)["token_ids"]
    assert _gen(llm, "Once upon a time", sp)["token_ids"] == first


def test_thousands_of_stop_strings(llm):
    """5,000 stop strings (and some long ones) that never match, then one that does: output is unchanged
    until the stop, and the request finishes normally."""
    prompt = "Count with me:"
    plain = _gen(llm, prompt, SamplingParams(temperature=0, max_tokens=24, ignore_eos=True))
    never = [f"\u2603{i:05d}\u2603" for i in range(5000)] + ["\u2603" * 1024]
    out = _gen(llm, prompt, SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, stop=never))
    assert out["token_ids"] == plain["token_ids"] and out["text"] == plain["text"]
    assert out["finish_reason"] == "length"
    stop_at = plain["text"][len(plain["text"]) // 2 :][:3]
    if stop_at.strip():
        cut = _gen(llm, prompt, SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, stop=[*never, stop_at]))
        assert cut["finish_reason"] == "stop" and cut["text"] == plain["text"][: plain["text"].find(stop_at)]


def test_hostile_inputs_through_the_service(llm):
    """The service validates in the caller's thread (ValueError at submit) and keeps serving."""
    with EngineService(llm) as svc:
        for prompt, needle in BAD_PROMPTS.values():
            with pytest.raises(ValueError, match=needle):
                svc.submit(prompt, GREEDY)
        handles = {name: svc.submit(p, GREEDY) for name, p in VALID_ODD_PROMPTS.items()}
        handles["extreme"] = svc.submit(
            "x", SamplingParams(temperature=1e9, top_p=1e-9, max_tokens=8, ignore_eos=True, seed=-7)
        )
        handles["stops"] = svc.submit(
            "y", SamplingParams(max_tokens=8, ignore_eos=True, stop=[f"#{i}#" for i in range(3000)])
        )
        for name, handle in handles.items():
            res = handle.result(timeout=120)
            assert res.finish_reason == "length" and len(res.token_ids) == 8, (name, res)
        assert svc.fatal_error is None
        assert not [e for e in svc.events() if e.kind in ("step_error", "fatal")]
    check_clean(llm)
