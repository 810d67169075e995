"""EngineService when things go wrong: a failing step, a fatal error, shutdown with requests in flight; and the
RequestHandle's reader contract (one reader at a time, result() from any thread)."""

# ruff: noqa: F811 (fixtures imported from test_service are requested by parameter name)
from __future__ import annotations

import threading
import time

import pytest
from test_service import drained_blocks, engine_kwargs, tiny, tiny_dir, tiny_svc, wait_for  # noqa: F401 (fixtures)

from nanovllm_tui.engine import LLM, SamplingParams
from nanovllm_tui.engine.serving.thread_service import EngineService


def test_step_exception_fails_only_that_steps_requests(tiny_svc, tiny, monkeypatch):
    real_launch = tiny.model_runner.launch

    def launch(items, *args):
        if any(seq.request_id == "boom" for seq, _ in items):
            raise RuntimeError("injected failure")
        return real_launch(items, *args)

    sp = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    reference = tiny_svc.submit("after the error", sp).result(timeout=30)
    monkeypatch.setattr(tiny.model_runner, "launch", launch)
    bad = tiny_svc.submit("this one fails", sp, request_id="boom").result(timeout=30)
    assert bad.finish_reason == "error" and "injected failure" in bad.error
    good = tiny_svc.submit("after the error", sp).result(timeout=30)
    assert good.finish_reason == "length" and good.token_ids == reference.token_ids
    events = tiny_svc.events()
    assert [e.kind for e in events] == ["step_error"]
    assert events[0].request_ids == ("boom",) and "injected failure" in events[0].message
    assert any(s.error and "injected failure" in s.error for s in tiny_svc.stats_history())
    assert tiny_svc.is_running and drained_blocks(tiny_svc)


def test_fatal_error_fails_pending_and_stops(tiny_dir, monkeypatch):
    def schedule():
        raise RuntimeError("device is gone")

    llm = LLM(str(tiny_dir), **engine_kwargs())  # its own engine: a fatal error leaves it unusable
    monkeypatch.setattr(llm.scheduler, "schedule", schedule)
    tiny_svc = EngineService(llm)
    with tiny_svc.batch():  # all three pending when the fatal step comes (else later submits race it and raise)
        handles = [tiny_svc.submit(f"req {i}", SamplingParams(max_tokens=4)) for i in range(3)]
    for h in handles:
        out = h.result(timeout=10)
        assert out.finish_reason == "error" and "device is gone" in out.error
    assert wait_for(lambda: not tiny_svc.is_running)
    assert [e.kind for e in tiny_svc.events()] == ["fatal"]
    assert "device is gone" in tiny_svc.fatal_error
    with pytest.raises(RuntimeError, match="device is gone"):
        tiny_svc.submit("too late", SamplingParams())
    tiny_svc.shutdown()


def test_shutdown_is_quick_and_ends_pending_requests(tiny):
    svc = EngineService(tiny)
    running = svc.submit("a long answer", SamplingParams(max_tokens=200, ignore_eos=True))
    assert running.get(timeout=30) is not None
    start = time.monotonic()
    svc.shutdown()
    assert time.monotonic() - start < 5.0
    out = running.result(timeout=1)
    assert out.finish_reason == "abort" and "shut down" in out.error
    assert not svc.is_running
    with pytest.raises(RuntimeError, match="stopped"):
        svc.submit("late", SamplingParams())
    assert tiny.stats().num_blocks_used == 0 and not tiny.has_unfinished_requests()  # the engine is reusable


def test_one_reader_per_handle_and_result_from_any_thread(tiny_svc):
    """A second thread reading deltas while another reads them is refused at once (it would wait forever for
    deltas the first one took); result() works from any number of threads meanwhile and sees everything."""
    h = tiny_svc.submit("Once upon a time", SamplingParams(temperature=0, max_tokens=40, ignore_eos=True))
    first, proceed, deltas = threading.Event(), threading.Event(), []

    def reader() -> None:
        for out in h:
            deltas.append(out)
            first.set()
            proceed.wait(60)  # the iterator stays open: this thread is the handle's reader

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    assert first.wait(60)
    for read in (lambda: h.get(timeout=1), lambda: next(iter(h)), h.drain):
        with pytest.raises(RuntimeError, match="already being read by another thread; use one reader per handle"):
            read()
    results: list = []
    waiters = [threading.Thread(target=lambda: results.append(h.result()), daemon=True) for _ in range(3)]
    for w in waiters:
        w.start()
    proceed.set()
    for t in (thread, *waiters):
        t.join(60)
        assert not t.is_alive()
    assert len(results) == 3 and all(r == results[0] for r in results)
    assert results[0].finish_reason == "length" and len(results[0].token_ids) == 40
    assert [t for d in deltas for t in d.token_ids] == results[0].token_ids == h.token_ids
    assert "".join(d.text for d in deltas) == results[0].text == h.text and h.finished
    assert h.get(timeout=0) is None and h.drain() == []  # the reader is done: any thread may look now


def test_result_from_two_threads_at_once_both_return(tiny_svc):
    h = tiny_svc.submit("Two waiters", SamplingParams(temperature=0, max_tokens=30, ignore_eos=True))
    results: list = []
    waiters = [threading.Thread(target=lambda: results.append(h.result()), daemon=True) for _ in range(2)]
    for w in waiters:
        w.start()
    for w in waiters:
        w.join(60)
        assert not w.is_alive(), "result() with no timeout never returned"
    assert len(results) == 2 and results[0] == results[1] and len(results[0].token_ids) == 30
