"""ProcessEngineService when the engine process misbehaves or its parent dies: killed, stopped (SIGSTOP: no
heartbeat), shut down with requests in flight, orphaned (parent SIGKILLed while it serves or while it loads)."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest
from test_cli import ROOT
from test_process_service import OPTIONS, live_children, wait_for

from nanovllm_tui.engine import SamplingParams
from nanovllm_tui.engine.serving.process_service import ProcessEngineService


def test_killed_engine_process_fails_requests_and_refuses_new_ones(tiny_qwen3_gqa_dir):
    svc = ProcessEngineService(tiny_qwen3_gqa_dir, torch_threads=1, **OPTIONS)
    try:
        handles = [svc.submit(f"story {i}", SamplingParams(max_tokens=200, ignore_eos=True)) for i in range(3)]
        assert handles[0].get(timeout=30) is not None
        os.kill(svc.pid, signal.SIGKILL)
        for h in handles:
            out = h.result(timeout=10)
            assert out.finish_reason == "error" and "killed by SIGKILL" in out.error
        assert "exited unexpectedly (killed by SIGKILL)" in svc.fatal_error and not svc.is_running
        assert [e.kind for e in svc.events()] == ["fatal"]
        with pytest.raises(RuntimeError, match="killed by SIGKILL"):
            svc.submit("too late", SamplingParams())
        assert not svc.abort(handles[0].request_id)
    finally:
        start = time.monotonic()
        svc.shutdown()
        assert time.monotonic() - start < 5.0


def test_shutdown_ends_requests_and_leaves_no_process(tiny_qwen3_gqa_dir):
    before = live_children()
    svc = ProcessEngineService(tiny_qwen3_gqa_dir, torch_threads=1, **OPTIONS)
    child = psutil.Process(svc.pid)
    running = svc.submit("a long answer", SamplingParams(max_tokens=250, ignore_eos=True))
    assert running.get(timeout=30) is not None
    start = time.monotonic()
    svc.shutdown()
    assert time.monotonic() - start < 5.0
    out = running.result(timeout=1)
    assert out.finish_reason == "abort" and "shut down" in out.error
    assert not svc.is_running and not child.is_running()
    assert live_children() <= before
    with pytest.raises(RuntimeError, match="stopped"):
        svc.submit("late", SamplingParams())
    svc.shutdown()  # idempotent


def test_engine_process_exits_when_its_parent_dies(tiny_qwen3_gqa_dir):
    script = textwrap.dedent(f"""
        import sys, time
        from nanovllm_tui.engine import SamplingParams
        from nanovllm_tui.engine.serving.process_service import ProcessEngineService
        if __name__ == "__main__":
            svc = ProcessEngineService({str(tiny_qwen3_gqa_dir)!r}, torch_threads=1, **{OPTIONS!r})
            svc.submit("busy", SamplingParams(max_tokens=250, ignore_eos=True))
            print(svc.pid, flush=True)
            time.sleep(600)
    """)
    parent = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        child = psutil.Process(int(parent.stdout.readline()))
        parent.kill()
        parent.wait(10)
        gone = wait_for(lambda: not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, timeout=10)
        assert gone, "the engine process outlived its parent"
    finally:
        parent.kill()
        parent.wait(10)


def run_with_deadline(fn, timeout: float):
    """fn() on a daemon thread; (finished in time, its result or exception)."""
    box: list = []
    thread = threading.Thread(target=lambda: box.append(_call(fn)), daemon=True)
    thread.start()
    thread.join(timeout)
    return (not thread.is_alive()), (box[0] if box else None)


def _call(fn):
    try:
        return fn()
    except BaseException as exc:
        return exc


@pytest.mark.slow
def test_stopped_engine_process_is_reported_and_shutdown_kills_it(tiny_qwen3_gqa_dir):
    """SIGSTOP: no heartbeat, so the service reports it within seconds; submits never block on the full pipe
    meanwhile, and shutdown(1.0) returns within its second, killing the process."""
    svc = ProcessEngineService(tiny_qwen3_gqa_dir, torch_threads=1, **OPTIONS)
    child = psutil.Process(svc.pid)
    try:
        running = svc.submit("a long story", SamplingParams(max_tokens=200, ignore_eos=True))
        assert running.get(timeout=30) is not None
        os.kill(svc.pid, signal.SIGSTOP)
        stopped_at = time.monotonic()

        def flood() -> int:  # ~1 KB per message: enough to fill the pipe to a stopped reader many times over
            sent = 0
            while time.monotonic() - stopped_at < 15:
                try:
                    svc.submit([7] * 200, SamplingParams(max_tokens=8))
                except RuntimeError:
                    return sent
                sent += 1
            return sent

        finished, sent = run_with_deadline(flood, 20)
        assert finished, "submit() blocked on the pipe to a stopped engine process"
        assert isinstance(sent, int) and sent > 300
        out = running.result(timeout=10)
        assert time.monotonic() - stopped_at < 6.0
        assert out.finish_reason == "error" and "stopped responding" in out.error
        assert not svc.is_running and "stopped responding" in svc.fatal_error
        assert [e.kind for e in svc.events()] == ["fatal"]
        with pytest.raises(RuntimeError, match="stopped responding"):
            svc.submit("too late", SamplingParams())
    finally:
        start = time.monotonic()
        svc.shutdown(1.0)
        took = time.monotonic() - start
        if child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
            child.kill()
    assert took < 1.5, f"shutdown(1.0) took {took:.2f} s"  # its timeout, plus scheduling slack
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE


def heartbeat_thread_started(pid: int) -> bool:
    """The engine process named its heartbeat thread: it passed die_with_parent and is building the engine."""
    try:
        names = [(task / "comm").read_text().strip() for task in pathlib.Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        return False
    return "nanovllm-beat" in names


# Loaded by every Python process started with this folder on PYTHONPATH (the test's parent and the engine process
# it spawns): the weight load writes a marker and then never returns, so the engine process is genuinely stuck
# inside loading (past the model-dir checks, which now reject a FIFO up front) when its parent is killed.
STALL_LOAD = """
import os, pathlib, threading
import nanovllm_tui.engine.execution.loader as loader

def load_model(model, model_dir, progress=None):
    pathlib.Path(os.environ["NANOVLLM_TEST_LOADING"]).write_text(str(os.getpid()))
    threading.Event().wait()

loader.load_model = load_model
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_engine_process_dies_with_its_parent_while_loading(tiny_qwen3_gqa_dir, tmp_path):
    """The parent is SIGKILLed while the engine process is inside its weight load, which never returns."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(STALL_LOAD)
    marker = tmp_path / "loading.pid"
    script = textwrap.dedent(f"""
        import threading, time
        from nanovllm_tui.engine.serving.process_service import ProcessEngineService
        if __name__ == "__main__":
            kwargs = dict(torch_threads=1, **{OPTIONS!r})
            model = {str(tiny_qwen3_gqa_dir)!r}
            threading.Thread(target=ProcessEngineService, args=(model,), kwargs=kwargs, daemon=True).start()
            time.sleep(600)
    """)
    env = {**os.environ, "PYTHONPATH": f"{hook}{os.pathsep}{ROOT}", "NANOVLLM_TEST_LOADING": str(marker)}
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=env)
    engine = None
    try:
        assert wait_for(marker.exists, 120), "the engine process never reached its weight load"
        assert wait_for(lambda: marker.read_text().strip() != "", 10)
        engine = psutil.Process(int(marker.read_text()))
        assert engine.ppid() == parent.pid and heartbeat_thread_started(engine.pid)
        parent.kill()
        parent.wait(10)
        gone = wait_for(lambda: not engine.is_running() or engine.status() == psutil.STATUS_ZOMBIE, timeout=15)
        assert gone, "the engine process outlived its parent while loading"
    finally:
        parent.kill()
        parent.wait(10)
        if engine is not None and engine.is_running():
            engine.kill()
