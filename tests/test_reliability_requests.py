"""Issue 19, engine side: one request's parameters are bounded to what the kernels take, and a step that fails
because of one request's data ends that request only (tiny Qwen3, real engine)."""

from __future__ import annotations

import pytest
from engine_helpers import check_clean

from nanovllm_tui.engine import LLM, SamplingParams

OPTS = dict(kvcache_block_size=16, max_model_len=128, num_kvcache_blocks=64)
GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
PROMPT_A = [101, 202, 303, 404, 505]
PROMPT_B = [11, 22, 33, 44, 55, 66, 77]


@pytest.fixture(scope="module")
def llm(tiny_qwen3_gqa_dir) -> LLM:
    return LLM(str(tiny_qwen3_gqa_dir), **OPTS)


def _drive(llm: LLM, max_steps: int = 200, got: dict[str, dict] | None = None) -> dict[str, dict]:
    """Step until idle (or max_steps), accumulating each request's outputs into `got`."""
    got = {} if got is None else got
    for _ in range(max_steps):
        if not llm.has_unfinished_requests():
            break
        for o in llm.step():
            r = got.setdefault(o.request_id, {"token_ids": []})
            r["token_ids"] += o.token_ids
            if o.finished:
                r["finish_reason"], r["error"] = o.finish_reason, o.error
    return got


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(temperature=1.0, top_k=2**63), "top_k"),
        (dict(top_k=2**31), "top_k"),
        (dict(max_tokens=2**63), "max_tokens"),
        (dict(seed=2**64), "seed"),
        (dict(seed=-(2**63) - 1), "seed"),
        (dict(stop_token_ids=[2**63]), "stop_token_ids"),
        (dict(temperature=1e39), "temperature"),
    ],
)
def test_integer_and_float_fields_are_bounded_to_what_the_kernels_take(kwargs, needle):
    with pytest.raises(ValueError, match=needle) as info:
        SamplingParams(**kwargs)
    assert "\n" not in str(info.value)


def test_top_k_and_stop_ids_are_bounded_by_the_vocabulary(llm):
    vocab = llm.config.hf_config.vocab_size
    with pytest.raises(ValueError, match=f"top_k={vocab + 1}.*{vocab}"):
        llm.add_request(PROMPT_A, SamplingParams(temperature=1.0, top_k=vocab + 1))
    with pytest.raises(ValueError, match=f"stop_token_ids.*{vocab}"):
        llm.add_request(PROMPT_A, SamplingParams(stop_token_ids=[vocab]))
    assert not llm.has_unfinished_requests()
    # The largest allowed top_k runs (it keeps the whole vocabulary).
    out = llm.generate([PROMPT_A], SamplingParams(temperature=1.0, top_k=vocab, max_tokens=4, seed=1), use_tqdm=False)
    assert out[0]["finish_reason"] == "length"
    check_clean(llm)


@pytest.mark.parametrize("at_step", [0, 3], ids=["prefill", "mid_decode"])
def test_a_step_failing_on_one_requests_data_ends_that_request_only(llm, at_step):
    """A request whose parameters went bad after admission (nothing else can get them past validation) makes
    the step raise; the engine finds it by re-checking the step's requests and ends it alone: the other
    request is recomputed and gives exactly its tokens."""
    alone = llm.generate([PROMPT_A], GREEDY, use_tqdm=False)[0]["token_ids"]
    bad = SamplingParams(temperature=1.0, max_tokens=8, ignore_eos=True)
    llm.add_request(PROMPT_A, GREEDY, request_id="good")
    llm.add_request(PROMPT_B, bad, request_id="bad")
    got = _drive(llm, max_steps=at_step)
    assert got.get("good", {}).get("finish_reason") is None
    object.__setattr__(bad, "top_k", 2**63)  # what validation would refuse, planted past it
    _drive(llm, got=got)
    assert not llm.has_unfinished_requests()
    assert got["bad"]["finish_reason"] == "error"
    assert "top_k" in got["bad"]["error"], got["bad"]["error"]
    assert got["good"]["finish_reason"] == "length", got["good"]
    assert got["good"]["token_ids"] == alone
    check_clean(llm)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(stop=5), "stop must be a string or a list of strings, got int"),
        (dict(stop=[b"x"]), "stop must be a string or a list of strings"),
        (dict(temperature=10**400), "temperature"),
        (dict(temperature="0.5"), "temperature"),
        (dict(temperature=True), "temperature"),
        (dict(top_p=True), "top_p"),
        (dict(top_p=10**400), "top_p"),
        (dict(top_k=True), "top_k"),
        (dict(top_k=5.0), "top_k"),
        (dict(max_tokens=True), "max_tokens"),
        (dict(max_tokens=8.0), "max_tokens"),
        (dict(seed=True), "seed"),
        (dict(ignore_eos="yes"), "ignore_eos"),
        (dict(stop_token_ids=5), "stop_token_ids"),
        (dict(stop_token_ids=[True]), "stop_token_ids"),
        (dict(stop_token_ids=[-1]), "stop_token_ids"),
    ],
)
def test_misused_fields_raise_value_error_naming_the_field(kwargs, needle):
    with pytest.raises(ValueError, match=needle) as info:
        SamplingParams(**kwargs)
    assert "\n" not in str(info.value)


def test_sampling_params_cannot_change_after_validation():
    sp = SamplingParams(temperature=0.5, stop="x")
    assert sp.stop == ["x"] and sp.temperature == 0.5
    with pytest.raises(AttributeError):
        sp.top_k = 2**63  # type: ignore[misc]
    import pickle

    assert pickle.loads(pickle.dumps(sp)) == sp  # the process service sends them to its child
