"""Fault injection on the real engine (tiny Qwen3): a failing forward, a failing tokenizer, NaN logits
for one request, and a KV cache that cannot be allocated. One fault hurts one request (or one step's
requests), never the engine or the others."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import check_clean

from nanovllm_tui.engine import LLM, SamplingParams
from nanovllm_tui.engine.execution.model_runner import ModelRunner

OPTS = dict(kvcache_block_size=16, max_model_len=128, num_kvcache_blocks=64, max_num_seqs=2)
PROMPTS = {f"r{i}": [100 + 37 * i + k for k in range(5 + 7 * i)] for i in range(4)}
GREEDY = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)


def _drive(llm: LLM, max_steps: int = 200) -> dict[str, dict]:
    got: dict[str, dict] = {}
    for _ in range(max_steps):
        if not llm.has_unfinished_requests():
            break
        for o in llm.step():
            r = got.setdefault(o.request_id, {"token_ids": []})
            r["token_ids"] += o.token_ids
            if o.finished:
                r["finish_reason"], r["error"] = o.finish_reason, o.error
    assert not llm.has_unfinished_requests()
    return got


@pytest.fixture(scope="module")
def reference(tiny_qwen3_gqa_dir):
    llm = LLM(str(tiny_qwen3_gqa_dir), **OPTS)
    for rid, p in PROMPTS.items():
        llm.add_request(p, GREEDY, request_id=rid)
    return {rid: r["token_ids"] for rid, r in _drive(llm).items()}


def test_model_exception_at_step_k_fails_that_steps_requests_only(tiny_qwen3_gqa_dir, reference, monkeypatch):
    llm = LLM(str(tiny_qwen3_gqa_dir), **OPTS)
    calls = {"n": 0}
    real_execute = ModelRunner.execute

    def execute(self, inputs):
        calls["n"] += 1
        if calls["n"] == 3:  # max_num_seqs=2: r0 and r1 are decoding; r2, r3 wait
            raise RuntimeError("injected failure in the forward")
        return real_execute(self, inputs)

    monkeypatch.setattr(ModelRunner, "execute", execute)
    for rid, p in PROMPTS.items():
        llm.add_request(p, GREEDY, request_id=rid)
    got = _drive(llm)
    for rid in ("r0", "r1"):
        assert got[rid]["finish_reason"] == "error"
        assert "injected failure in the forward" in got[rid]["error"]
        assert got[rid]["token_ids"] == reference[rid][:2]  # what it streamed before the failure was right
    for rid in ("r2", "r3"):
        assert got[rid]["finish_reason"] == "length" and got[rid]["token_ids"] == reference[rid]
    assert llm.last_step is not None and calls["n"] > 3
    check_clean(llm)
    # The failed step's blocks were written with nothing: resubmitting r0 must not reuse them.
    llm.add_request(PROMPTS["r0"], GREEDY, request_id="again")
    assert _drive(llm)["again"]["token_ids"] == reference["r0"]
    check_clean(llm)


def test_tokenizer_that_raises_on_one_request(tiny_qwen3_gqa_dir, monkeypatch):
    llm = LLM(str(tiny_qwen3_gqa_dir), **OPTS)
    real_encode = llm.tokenizer.encode

    def encode(text, *args, **kwargs):
        if "poison" in text:
            raise RuntimeError("tokenizer exploded")
        return real_encode(text, *args, **kwargs)

    monkeypatch.setattr(llm.tokenizer, "encode", encode)
    llm.add_request("a fine prompt", GREEDY, request_id="ok1")
    with pytest.raises(ValueError, match=r"cannot tokenize the prompt .*tokenizer exploded") as info:
        llm.add_request("a poison prompt", GREEDY, request_id="bad")
    assert "\n" not in str(info.value)
    llm.add_request("another fine prompt", GREEDY, request_id="ok2")
    assert "bad" not in llm.requests
    got = _drive(llm)
    assert set(got) == {"ok1", "ok2"} and all(r["finish_reason"] == "length" for r in got.values())
    check_clean(llm)


@pytest.mark.parametrize(
    "victim_sp",
    [GREEDY, SamplingParams(temperature=0.8, top_k=20, top_p=0.9, seed=3, max_tokens=6, ignore_eos=True)],
    ids=["greedy", "sampled"],
)
def test_nan_logits_for_one_row_fail_that_request_only(tiny_qwen3_gqa_dir, reference, victim_sp):
    llm = LLM(str(tiny_qwen3_gqa_dir), **dict(OPTS, max_num_seqs=4))
    runner = llm.model_runner
    real_prepare, real_logits = runner.prepare, runner.model.compute_logits
    state = {"items": [], "victim_samples": 0}

    def prepare(items, ahead=False):  # the rows in the order the runner lays them out
        state["items"] = items
        return real_prepare(items, ahead)

    def compute_logits(hidden):
        logits = real_logits(hidden)
        samplers = [s for s, n in state["items"] if s.num_computed_tokens + n == s.num_tokens]
        for row, seq in enumerate(samplers):
            if seq.request_id == "victim" and row < logits.shape[0]:
                state["victim_samples"] += 1
                if state["victim_samples"] == 3:  # mid-decode
                    logits[row, 5] = float("nan")
        return logits

    runner.prepare, runner.model.compute_logits = prepare, compute_logits
    for rid in ("r0", "r1", "r2"):
        llm.add_request(PROMPTS[rid], GREEDY, request_id=rid)
    llm.add_request(PROMPTS["r3"], victim_sp, request_id="victim")
    got = _drive(llm)
    assert got["victim"]["finish_reason"] == "error"
    assert "non-finite logits" in got["victim"]["error"]
    assert len(got["victim"]["token_ids"]) == 2
    for rid in ("r0", "r1", "r2"):
        assert got[rid]["token_ids"] == reference[rid] and got[rid]["finish_reason"] == "length"
    check_clean(llm)


def test_kv_cache_too_big_for_memory_is_one_clear_line(tiny_qwen3_gqa_dir):
    with pytest.raises(ValueError) as info:
        LLM(str(tiny_qwen3_gqa_dir), kvcache_block_size=16, max_model_len=128, kv_cache_memory=1 << 52)
    msg = str(info.value)
    assert "\n" not in msg and "cannot allocate a KV cache" in msg and "kv_cache_memory=" in msg, msg


def test_kv_cache_allocator_oom_is_one_clear_line(tiny_qwen3_gqa_dir, monkeypatch):
    def oom(self, num_blocks):
        raise torch.OutOfMemoryError(
            "CUDA out of memory. Tried to allocate 40.00 GiB.\nGPU 0 has a total "
            "capacity of 79.1 GiB of which 1.2 GiB is free.\nSee documentation ..."
        )

    monkeypatch.setattr(ModelRunner, "_bind_kv_cache", oom)
    with pytest.raises(ValueError) as info:
        LLM(str(tiny_qwen3_gqa_dir), kvcache_block_size=16, max_model_len=128, num_kvcache_blocks=1000)
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert "CUDA out of memory" in msg and "num_kvcache_blocks=" in msg and "gpu_memory_utilization=" in msg


def test_kv_cache_memory_below_one_block_names_the_flag(tiny_qwen3_gqa_dir):
    with pytest.raises(ValueError, match=r"kv_cache_memory=1 bytes holds no block.*raise kv_cache_memory="):
        LLM(str(tiny_qwen3_gqa_dir), kvcache_block_size=16, max_model_len=128, kv_cache_memory=1)
