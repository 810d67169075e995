"""ProcessEngineService on CPU with a real engine process: same outputs as EngineService, streaming, abort,
stats, validation, start-up errors, a killed engine, shutdown and a dead parent, tensor parallelism."""

from __future__ import annotations

import time

import psutil
import pytest
from test_cli import copy_model, edit_config

from nanovllm_tui.engine import LLM, SamplingParams
from nanovllm_tui.engine.execution.loader import ModelLoadError
from nanovllm_tui.engine.serving.process_service import ProcessEngineService
from nanovllm_tui.engine.serving.protocol import EngineInfo, Service
from nanovllm_tui.engine.serving.thread_service import EngineService
from nanovllm_tui.engine.text.tokenizer import load_tokenizer

OPTIONS = dict(device="cpu", kvcache_block_size=16, max_model_len=256, num_kvcache_blocks=96)


@pytest.fixture(scope="module")
def psvc(tiny_qwen3_gqa_dir):
    """One engine process shared by the module (its start costs a model load)."""
    svc = ProcessEngineService(tiny_qwen3_gqa_dir, torch_threads=1, **OPTIONS)
    yield svc
    svc.shutdown()


def live_children() -> set[int]:
    return {
        p.pid
        for p in psutil.Process().children(recursive=True)
        if p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    }


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_greedy_output_equals_engine_service(psvc, tiny_qwen3_gqa_dir):
    requests = [
        ("The capital of France is", SamplingParams(temperature=0, max_tokens=12)),
        ([{"role": "user", "content": "Say hi"}], SamplingParams(temperature=0, max_tokens=9, ignore_eos=True)),
    ]
    with EngineService(LLM(str(tiny_qwen3_gqa_dir), **OPTIONS)) as local:
        expected = [local.submit(p, sp).result(timeout=60) for p, sp in requests]
    handles = [psvc.submit(p, sp) for p, sp in requests]
    for h, exp in zip(handles, expected):
        out = h.result(timeout=60)
        assert (out.token_ids, out.text, out.finish_reason) == (exp.token_ids, exp.text, exp.finish_reason)
        assert out.token_ids and out.error is None
        m = h.metrics
        assert m.num_prompt_tokens > 0 and m.time_to_first_token is not None and m.time_to_first_token > 0
        assert len(m.inter_token_latencies) == len(out.token_ids) - 1
        assert all(x >= 0 for x in m.inter_token_latencies) and m.e2e_latency >= m.time_to_first_token


def test_deltas_stream_incrementally(psvc):
    h = psvc.submit("Tell me a story", SamplingParams(temperature=0, max_tokens=120, ignore_eos=True))
    deltas, seen_at = [], []
    for out in h:
        deltas.append(out)
        seen_at.append(time.monotonic())
    assert len(deltas) >= 3, "the whole answer arrived in one message"
    assert seen_at[0] < h.metrics.finished_time  # the first delta was read before the engine finished
    assert sum(len(d.token_ids) for d in deltas) == 120 == len(h.token_ids)
    assert "".join(d.text for d in deltas) == h.text and deltas[-1].finished and sum(d.finished for d in deltas) == 1


def test_abort_frees_blocks_and_ids_are_reusable(psvc):
    h = psvc.submit("A long answer", SamplingParams(temperature=0, max_tokens=200, ignore_eos=True), request_id="long")
    assert h.get(timeout=30) is not None
    assert psvc.abort("long")
    out = h.result(timeout=30)
    assert out.finish_reason == "abort" and len(out.token_ids) < 200
    stats = psvc.stats()  # updated before the final delta was handed over: no waiting needed
    assert stats.num_blocks_used == 0 and stats.num_running == 0
    assert not psvc.abort("long")
    again = psvc.submit("Hi", SamplingParams(max_tokens=2), request_id="long")
    assert again.result(timeout=30).finish_reason in ("stop", "length")


def test_engine_process_uses_the_serving_defaults(psvc):
    from nanovllm_tui.engine.config import SERVING_MIXED_PREFILL_TOKENS

    assert "mixed_prefill_tokens" not in OPTIONS
    assert psvc.engine_info().mixed_prefill_tokens == SERVING_MIXED_PREFILL_TOKENS


def test_step_stats_policy_switch_and_block_map(psvc):
    seen = []
    unsubscribe = psvc.subscribe(seen.append)
    try:
        before = psvc.stats_history()
        last = before[-1].step if before else None
        psvc.set_scheduling_policy("prefill_first")
        psvc.set_block_map(True)
        h = psvc.submit("Hello there", SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))
        h.result(timeout=30)
        steps = psvc.stats_history(since_step=last)
        assert steps and [s.step for s in steps] == sorted(s.step for s in steps)
        assert all(s.policy == "prefill_first" for s in steps) and steps[-1].block_map is not None
        assert len(steps[-1].block_map.states) == steps[-1].num_blocks_total == 96
        assert sum(s.num_decode_tokens for s in steps) == 3 and sum(s.num_prefill_tokens for s in steps) > 0
        assert psvc.stats_history(since_step=steps[-1].step) == []
        assert wait_for(lambda: [s.step for s in seen][-len(steps) :] == [s.step for s in steps])
        assert psvc.stats().num_steps == steps[-1].step
    finally:
        unsubscribe()
        psvc.set_scheduling_policy("mixed")
        psvc.set_block_map(False)


def test_reasoning_is_split_in_the_caller_process(psvc):
    # The prompt ends inside <think>: everything the (random) model writes is reasoning until a </think>.
    h = psvc.submit(
        "Question: 2+2?\n<think>\n", SamplingParams(temperature=0, max_tokens=12, ignore_eos=True), split_reasoning=True
    )
    out = h.result(timeout=30)
    assert out.reasoning and out.text == "" and "</think>" not in out.reasoning
    tokenizer = load_tokenizer(psvc.engine_info().model)
    assert out.reasoning == tokenizer.decode(out.token_ids, skip_special_tokens=True)


def test_bad_requests_raise_one_line_errors_and_serving_goes_on(psvc):
    vocab = psvc.engine_info().vocab_size
    cases = [
        ("", SamplingParams(), "prompt is empty"),
        ("hello", SamplingParams(max_tokens=300), "exceeds max_model_len=256"),
        ([{"content": "no role"}], SamplingParams(), "role"),
        ([1, vocab], SamplingParams(), "token ids must be integers"),
        (42, SamplingParams(), "prompt must be"),
        ("hello", {"max_tokens": 3}, "SamplingParams"),
    ]
    for prompt, sp, needle in cases:
        with pytest.raises(ValueError, match=needle) as info:
            psvc.submit(prompt, sp)
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="choose one of"):
        psvc.set_scheduling_policy("fastest")
    h = psvc.submit("hello", SamplingParams(max_tokens=20, ignore_eos=True), request_id="dup")
    with pytest.raises(ValueError, match="already in use"):
        psvc.submit("hello", SamplingParams(), request_id="dup")
    for bad_id in (5, "", b"dup"):  # refused in the caller, not ended with "error" by the engine process
        with pytest.raises(ValueError, match="request_id must be a non-empty string"):
            psvc.submit("hello", SamplingParams(), request_id=bad_id)
    assert h.result(timeout=30).finish_reason == "length"
    assert psvc.is_running and psvc.fatal_error is None
    assert not [e for e in psvc.events() if e.kind in ("step_error", "fatal")]


def test_batch_starts_requests_in_one_step(psvc):
    last = (psvc.stats_history() or [None])[-1]
    sp = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)
    with psvc.batch():
        handles = [psvc.submit(f"prompt number {i}", sp) for i in range(4)]
    for h in handles:
        assert h.result(timeout=30).finish_reason == "length"
    first = psvc.stats_history(since_step=last.step if last else None)[0]
    assert first.num_seqs == 4 and first.num_decode_tokens == 0


@pytest.mark.parametrize("change", ["no_dir", "block_size", "unknown_option", "weights", "tiny_cache"])
def test_start_errors_match_in_process_errors(tmp_path, tiny_qwen3_gqa_dir, change):
    model, options = str(tiny_qwen3_gqa_dir), dict(OPTIONS)
    if change == "no_dir":
        model = str(tmp_path / "nope")
    elif change == "block_size":
        options["kvcache_block_size"] = 17
    elif change == "unknown_option":
        options["warp_speed"] = True
    elif change == "weights":
        model = str(copy_model(tiny_qwen3_gqa_dir, tmp_path / "m"))
        edit_config(tmp_path / "m", num_hidden_layers=4)
    else:
        del options["num_kvcache_blocks"]
        options["kv_cache_memory"] = 1
    with pytest.raises(Exception) as local:
        LLM(model, **options)
    before = live_children()
    with pytest.raises(Exception) as remote:
        ProcessEngineService(model, **options)
    assert type(remote.value) is type(local.value) and str(remote.value) == str(local.value)
    assert isinstance(remote.value, (ValueError, TypeError))
    if change == "weights":
        assert isinstance(remote.value, ModelLoadError)
    assert live_children() <= before, "the engine process outlived its start-up error"


def test_tensor_parallel_engine_in_a_process(tiny_qwen3_gqa_dir):
    """TP=2 (gloo on CPU): the engine process is rank 0 and spawns rank 1; same greedy tokens as TP=1."""
    sp = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    with EngineService(LLM(str(tiny_qwen3_gqa_dir), **OPTIONS)) as local:
        expected = local.submit("Tensor parallel test", sp).result(timeout=60).token_ids
    before = live_children()
    svc = ProcessEngineService(tiny_qwen3_gqa_dir, torch_threads=1, tensor_parallel_size=2, **OPTIONS)
    try:
        family = psutil.Process(svc.pid).children(recursive=True)
        assert svc.engine_info().tensor_parallel_size == 2 and svc.stats().tensor_parallel_size == 2
        assert svc.submit("Tensor parallel test", sp).result(timeout=60).token_ids == expected
    finally:
        svc.shutdown()
    assert family and wait_for(lambda: live_children() <= before, 5.0)


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_both_services_implement_the_protocol(kind, psvc, tiny_qwen3_gqa_dir):
    """engine_info, tokenize and reset_prefix_cache through the Service protocol: a prefix hit disappears after reset."""
    svc = psvc if kind == "process" else EngineService(LLM(str(tiny_qwen3_gqa_dir), **OPTIONS))
    try:
        assert isinstance(svc, Service)
        info = svc.engine_info()
        assert isinstance(info, EngineInfo) and info.model == str(tiny_qwen3_gqa_dir)
        assert (info.device, info.dtype, info.block_size, info.num_blocks, info.max_model_len) == (
            "cpu",
            "float32",
            16,
            96,
            256,
        )
        assert info.tensor_parallel_size == 1 and info.prefix_caching and info.attention_backend == "torch"
        tokenizer = load_tokenizer(str(tiny_qwen3_gqa_dir))
        assert info.vocab_size >= len(tokenizer)
        text = "Hello there, <|im_start|> world"
        assert svc.tokenize(text) == tokenizer.encode(text, add_special_tokens=False)
        with pytest.raises(ValueError, match="string"):
            svc.tokenize(42)  # type: ignore[arg-type]

        prompt = [200 + 3 * i for i in range(40)]  # two full blocks of 16 and a partial one
        sp = SamplingParams(temperature=0, max_tokens=2, ignore_eos=True)
        svc.submit(prompt, sp).result(timeout=60)
        hits = svc.stats().prefix_cache_hits
        again = svc.submit(prompt, sp)
        again.result(timeout=60)
        assert svc.stats().prefix_cache_hits - hits == 32 == again.metrics.num_cached_tokens
        svc.reset_prefix_cache()
        cold = svc.submit(prompt, sp)
        cold.result(timeout=60)
        assert svc.stats().prefix_cache_hits - hits == 32 and cold.metrics.num_cached_tokens == 0
    finally:
        if svc is not psvc:
            svc.shutdown()
