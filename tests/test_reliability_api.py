"""Issue 19, engine side: request ids are unique among live requests (caller ids and generated ids never
collide, so an abort ends exactly one request), LLM.generate never loses other requests' outputs, and API
misuse is a ValueError/TypeError naming the argument and what it takes (tiny Qwen3, real engine)."""

from __future__ import annotations

import pytest
from engine_helpers import check_clean

from nanovllm_tui.engine import LLM, SamplingParams

OPTS = dict(kvcache_block_size=16, max_model_len=128, num_kvcache_blocks=64)
SP = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
PROMPT = [101, 202, 303]


@pytest.fixture(scope="module")
def llm(tiny_qwen3_gqa_dir) -> LLM:
    return LLM(str(tiny_qwen3_gqa_dir), **OPTS)


def _finish_all(llm: LLM) -> dict[str, str | None]:
    reasons: dict[str, str | None] = {}
    for _ in range(100):
        if not llm.has_unfinished_requests():
            break
        reasons.update((o.request_id, o.finish_reason) for o in llm.step() if o.finished)
    assert not llm.has_unfinished_requests()
    return reasons


def test_generated_ids_never_collide_with_caller_ids(llm):
    first = llm.add_request(PROMPT, SP)
    n = int(first.request_id)
    # Each request takes the next sequence number, so the next generated id would be str(n + 2).
    caller = llm.add_request(PROMPT, SP, request_id=str(n + 2))
    generated = llm.add_request(PROMPT, SP)
    assert generated.request_id not in (caller.request_id, first.request_id)
    assert len({first.request_id, caller.request_id, generated.request_id}) == 3
    assert llm.abort_request(caller.request_id)
    reasons = _finish_all(llm)
    assert reasons == {first.request_id: "length", caller.request_id: "abort", generated.request_id: "length"}
    check_clean(llm)


def test_a_duplicate_live_id_is_rejected_and_a_finished_one_is_free_again(llm):
    llm.add_request(PROMPT, SP, request_id="dup")
    with pytest.raises(ValueError, match="request_id 'dup' is already in use"):
        llm.add_request(PROMPT, SP, request_id="dup")
    assert _finish_all(llm) == {"dup": "length"}
    llm.add_request(PROMPT, SP, request_id="dup")  # finished: the id may be used again
    assert _finish_all(llm) == {"dup": "length"}
    check_clean(llm)


@pytest.mark.parametrize("bad_id", [2, "", b"x", ("a",)])
def test_request_ids_must_be_non_empty_strings(llm, bad_id):
    with pytest.raises(ValueError, match="request_id must be a non-empty string"):
        llm.add_request(PROMPT, SP, request_id=bad_id)
    assert not llm.has_unfinished_requests()


def test_a_failed_generate_keeps_other_requests_outputs(llm):
    """generate() rejecting its prompts must not drop what other requests have pending (an abort here)."""
    llm.add_request(PROMPT, SP, request_id="other")
    assert llm.abort_request("other")
    with pytest.raises(ValueError, match="prompt is empty"):
        llm.generate([PROMPT, []], SP, use_tqdm=False)
    outs = llm.step()
    assert [(o.request_id, o.finish_reason) for o in outs] == [("other", "abort")]
    check_clean(llm)


def test_generate_keeps_the_outputs_of_requests_it_did_not_add(llm):
    """A streamed request added before generate() runs along; its outputs come from the next step()."""
    llm.add_request(PROMPT, SP, request_id="streamed")
    got = llm.generate([PROMPT], SP, use_tqdm=False)
    assert got[0]["finish_reason"] == "length"
    tokens: list[int] = []
    reasons = []
    while llm.has_unfinished_requests():
        for o in llm.step():
            assert o.request_id == "streamed"
            tokens += o.token_ids
            reasons.append(o.finish_reason)
    assert tokens == got[0]["token_ids"] and reasons[-1] == "length"
    check_clean(llm)


@pytest.mark.parametrize(
    "prompts, needle",
    [
        (None, "prompts must be a string, a list of token ids, or a list of those; got NoneType"),
        ({"a": 1}, "prompts must be .*got dict"),
        (5, "prompts must be .*got int"),
        ([["a"], "b"], "prompt must be a string or a list of token ids|prompt token ids must be integers"),
        ([[1, True]], "prompt token ids must be integers"),
    ],
)
def test_generate_rejects_bad_prompts_naming_the_argument(llm, prompts, needle):
    with pytest.raises((TypeError, ValueError), match=needle) as info:
        llm.generate(prompts, SP, use_tqdm=False)
    assert "\n" not in str(info.value)
    assert not llm.has_unfinished_requests()


@pytest.mark.parametrize(
    "params, needle",
    [
        (5, "sampling_params must be a SamplingParams, a list of them, or None; got int"),
        ({"temperature": 0}, "sampling_params must be .*got dict"),
        ([SP, 5], r"sampling_params\[1\] must be a SamplingParams or None, got int"),
        ([SP], "got 1 sampling_params for 2 prompts"),
    ],
)
def test_generate_rejects_bad_sampling_params_naming_the_argument(llm, params, needle):
    with pytest.raises((TypeError, ValueError), match=needle):
        llm.generate(["a", "b"], params, use_tqdm=False)
    assert not llm.has_unfinished_requests()


def test_generate_takes_none_in_a_list_as_the_default(llm):
    outs = llm.generate(["a", "b"], [SP, None], use_tqdm=False)
    assert outs[0]["finish_reason"] == "length" and len(outs[0]["token_ids"]) == 4
    assert outs[1]["finish_reason"] in ("stop", "length")
    assert llm.generate([], SP, use_tqdm=False) == []
    check_clean(llm)
