"""EngineService on CPU with real engines: streaming, abort, UTF-8 and stop strings, validation, idle CPU, chat
turns (faults: test_service_faults.py; chat templates and reasoning: test_service_chat.py)."""

from __future__ import annotations

import pathlib
import random
import threading
import time

import psutil
import pytest

from nanovllm_tui.engine import LLM, SamplingParams
from nanovllm_tui.engine.serving.thread_service import EngineService
from nanovllm_tui.engine.text.tokenizer import load_tokenizer
from tests.conftest import TINY_CONFIGS, make_tiny_qwen3

FINISH_REASONS = {"stop", "length", "abort", "error"}

# A cut-down Qwen3 chat template: same enable_thinking switch and same stripping of old reasoning.
QWEN3_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- set content = message['content'] %}"
    "{%- if message['role'] == 'assistant' and '</think>' in content %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)


def engine_kwargs(**overrides):
    return dict(kvcache_block_size=16, max_model_len=256, num_kvcache_blocks=96, **overrides)


@pytest.fixture(scope="module")
def smol(demo_model_dir) -> LLM:
    return LLM(str(demo_model_dir), **engine_kwargs())


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, demo_model_dir) -> pathlib.Path:
    """A random tiny Qwen3 whose tokenizer carries a Qwen3-style (thinking) chat template."""
    path = make_tiny_qwen3(tmp_path_factory.mktemp("qwen3-think"), demo_model_dir, **TINY_CONFIGS["qwen3-tiny"])
    (path / "chat_template.jinja").write_text(QWEN3_TEMPLATE)
    return path


@pytest.fixture(scope="module")
def tiny(tiny_dir) -> LLM:
    return LLM(str(tiny_dir), **engine_kwargs())


@pytest.fixture
def tiny_svc(tiny):
    svc = EngineService(tiny)
    yield svc
    svc.shutdown()


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def drained_blocks(svc: EngineService) -> bool:
    return wait_for(lambda: svc.stats().num_blocks_used == 0 and svc.stats().num_running == 0)


# -- SmolLM2: real text ----------------------------------------------------------------------------
def test_streaming_equals_generate_and_utf8_split(smol):
    """Greedy streaming == LLM.generate; a continuation with split multi-byte characters never streams U+FFFD."""
    tok = smol.tokenizer
    prompts = ["Repeat exactly: 😀🎉 你好世界 こんにちは", "The capital of France is"]
    sp = SamplingParams(temperature=0, max_tokens=10)
    expected = smol.generate(prompts, sp, use_tqdm=False)
    # The case must really split characters across tokens, or this test proves nothing.
    first_ids = expected[0]["token_ids"]
    assert any("\ufffd" in tok.decode([t]) for t in first_ids), "no split multi-byte character in the continuation"
    assert "\ufffd" not in expected[0]["text"]
    with EngineService(smol) as svc:
        handles = [svc.submit(p, sp) for p in prompts]
        for prompt, h, exp in zip(prompts, handles, expected):
            deltas = list(h)
            assert all("\ufffd" not in d.text for d in deltas)
            assert "".join(d.text for d in deltas) == exp["text"] == tok.decode(h.token_ids, skip_special_tokens=True)
            assert h.token_ids == exp["token_ids"]
            assert deltas[-1].finished and h.finish_reason == exp["finish_reason"]
            m = h.metrics
            assert m.num_prompt_tokens == len(tok.encode(prompt, add_special_tokens=False))
            assert m.time_to_first_token is not None and m.time_to_first_token > 0
            assert len(m.inter_token_latencies) == len(h.token_ids) - 1
            assert all(x >= 0 for x in m.inter_token_latencies) and m.e2e_latency >= m.time_to_first_token


def test_second_chat_turn_hits_prefix_cache(smol):
    sp = SamplingParams(temperature=0, max_tokens=8)
    turn1 = [{"role": "user", "content": "Name three colours of the rainbow, please."}]
    with EngineService(smol) as svc:
        h1 = svc.submit(turn1, sp)
        first = h1.result(timeout=120)
        assert drained_blocks(svc)
        full_block_tokens = h1.metrics.num_prompt_tokens // 16 * 16
        assert full_block_tokens >= 32
        hits_before = svc.stats().prefix_cache_hits
        turn2 = [*turn1, {"role": "assistant", "content": first.text}, {"role": "user", "content": "And two more?"}]
        h2 = svc.submit(turn2, sp)
        h2.result(timeout=120)
        assert drained_blocks(svc)
        assert svc.stats().prefix_cache_hits - hits_before >= full_block_tokens
        assert h2.metrics.num_cached_tokens >= full_block_tokens


# -- tiny Qwen3: cheap forwards ---------------------------------------------------------------------
def test_stop_string_spanning_token_boundary(tiny_svc):
    tok = load_tokenizer(tiny_svc.engine_info().model)
    sp = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    ref = tiny_svc.submit("Once upon a time", sp).result(timeout=60)
    ids = ref.token_ids
    # Find a boundary between two tokens that each decode to >= 2 clean characters, and make a stop
    # string of 2 characters on each side whose first occurrence is exactly there.
    for k in range(1, len(ids) - 1):
        before, after = tok.decode(ids[:k]), tok.decode(ids[: k + 1])
        piece = after[len(before) :]
        if "\ufffd" in after or len(piece) < 2 or not after.startswith(before) or len(before) < 2:
            continue
        full = ref.text
        stop = full[len(before) - 2 : len(before) + 2]
        if full.find(stop) == len(before) - 2 and stop.strip():
            break
    else:
        pytest.fail(f"no usable token boundary in {ref.text!r}")
    h = tiny_svc.submit("Once upon a time", SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, stop=[stop]))
    deltas = [d.text for d in h]
    assert "".join(deltas) == full[: len(before) - 2]
    assert h.finish_reason == "stop"
    assert h.token_ids == ids[: k + 1]  # stops on the token that completes the stop string


def test_concurrent_submits_with_random_aborts(tiny_svc):
    tok = load_tokenizer(tiny_svc.engine_info().model)
    barrier = threading.Barrier(16)
    results: list[tuple] = [None] * 16
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            rng = random.Random(i)
            sp = SamplingParams(temperature=0 if i % 2 else 0.8, seed=i, max_tokens=rng.randint(4, 24))
            barrier.wait()
            h = tiny_svc.submit(f"Request {i}: tell me about {'cats' if i % 3 else 'dogs'}", sp)
            abort_after = rng.randint(0, 6) if i % 4 == 0 else None
            deltas = []
            for out in h:
                deltas.append(out)
                if abort_after is not None and len(deltas) == abort_after:
                    tiny_svc.abort(h.request_id)
            results[i] = (h, deltas, abort_after)
        except BaseException as exc:  # surfaced below; a thread's assert would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    aborted = 0
    for h, deltas, _abort_after in results:
        assert deltas[-1].finished and sum(d.finished for d in deltas) == 1
        assert h.finish_reason in FINISH_REASONS and h.finish_reason != "error"
        text = "".join(d.text for d in deltas)
        assert text == h.text
        assert [t for d in deltas for t in d.token_ids] == h.token_ids
        full = tok.decode(h.token_ids, skip_special_tokens=True)
        if h.finish_reason == "abort":
            aborted += 1
            assert full.startswith(text)  # an abort may drop a half character, never invent text
        else:
            assert text == full
    assert aborted >= 1
    assert drained_blocks(tiny_svc)


def test_abort_frees_blocks_and_ids_are_reusable(tiny_svc):
    h = tiny_svc.submit(
        "Tell me a long story", SamplingParams(temperature=0, max_tokens=200, ignore_eos=True), request_id="story"
    )
    assert h.get(timeout=30) is not None
    assert tiny_svc.abort("story")
    out = h.result(timeout=30)
    assert out.finish_reason == "abort" and len(out.token_ids) < 200
    assert drained_blocks(tiny_svc)
    assert not tiny_svc.abort("story")  # no longer live
    again = tiny_svc.submit("Hi", SamplingParams(max_tokens=2), request_id="story")
    assert again.result(timeout=30).finish_reason in ("stop", "length")


def test_submit_validates_in_caller_thread(tiny_svc):
    with pytest.raises(ValueError, match="prompt is empty"):
        tiny_svc.submit("", SamplingParams())
    with pytest.raises(ValueError, match="exceeds max_model_len=256"):
        tiny_svc.submit("hello", SamplingParams(max_tokens=300))
    with pytest.raises(ValueError, match="role"):
        tiny_svc.submit([{"content": "no role"}])
    with pytest.raises(ValueError, match="choose one of"):
        tiny_svc.set_scheduling_policy("fastest")
    h = tiny_svc.submit("hello", SamplingParams(max_tokens=30, ignore_eos=True), request_id="dup")
    with pytest.raises(ValueError, match="already in use"):
        tiny_svc.submit("hello", SamplingParams(), request_id="dup")
    h.result(timeout=30)


def test_service_defaults_cap_prompt_tokens_beside_decodes(tiny_dir, tiny):
    """A service built from a model dir uses the serving cap (latency); LLM alone has none (throughput)."""
    from nanovllm_tui.engine.config import SERVING_MIXED_PREFILL_TOKENS

    assert tiny.scheduler.mixed_prefill_tokens == 0
    for kwargs, want in (({}, SERVING_MIXED_PREFILL_TOKENS), ({"mixed_prefill_tokens": 0}, 0)):
        svc = EngineService(tiny_dir, **engine_kwargs(**kwargs))
        try:
            assert svc.engine_info().mixed_prefill_tokens == want
        finally:
            svc.shutdown()


def test_service_freezes_startup_objects_until_shutdown(tiny):
    """Start-up objects leave the cyclic GC (no full-collection pauses mid-serving) and come back at shutdown."""
    import gc

    svc = EngineService(tiny)
    try:
        assert gc.get_freeze_count() > 100_000  # torch, transformers and the model, at least
    finally:
        svc.shutdown(close_engine=False)
    assert gc.get_freeze_count() == 0


def test_policy_switch_and_block_map_in_step_stats(tiny_svc):
    tiny_svc.set_scheduling_policy("prefill_first")
    tiny_svc.set_block_map(True)
    h = tiny_svc.submit("Hello there", SamplingParams(temperature=0, max_tokens=4))
    h.result(timeout=30)
    assert wait_for(lambda: bool(tiny_svc.stats_history()))
    steps = tiny_svc.stats_history()
    assert steps[-1].policy == "prefill_first" and steps[-1].block_map is not None
    assert len(steps[-1].block_map.states) == steps[-1].num_blocks_total
    assert [s.step for s in steps] == sorted(s.step for s in steps)
    assert tiny_svc.stats_history(since_step=steps[-1].step) == []
    assert sum(s.num_decode_tokens for s in steps) == 3 and sum(s.num_prefill_tokens for s in steps) > 0


def test_batch_starts_requests_in_one_step(tiny_svc):
    sp = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)
    with tiny_svc.batch():
        handles = [tiny_svc.submit(f"prompt number {i}", sp) for i in range(4)]
        time.sleep(0.05)  # the engine thread must not start any of them yet
        assert tiny_svc.stats_history() == []
    for h in handles:
        assert h.result(timeout=30).finish_reason == "length"
    first = tiny_svc.stats_history()[0]
    assert first.num_seqs == 4 and first.num_decode_tokens == 0


def test_idle_service_thread_uses_no_cpu(tiny_svc):
    tiny_svc.submit("warm up", SamplingParams(max_tokens=2)).result(timeout=30)
    time.sleep(0.2)
    native_id = tiny_svc.thread_native_id

    def cpu() -> float:
        for t in psutil.Process().threads():
            if t.id == native_id:
                return t.user_time + t.system_time
        raise AssertionError("engine thread not found")

    before = cpu()
    time.sleep(2.0)
    assert cpu() - before < 0.05 * 2.0
    # ...and a new request still starts at once.
    assert tiny_svc.submit("again", SamplingParams(max_tokens=2)).result(timeout=30).finish_reason == "length"
