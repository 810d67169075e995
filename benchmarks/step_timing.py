"""Engine step probes shared by the step benchmarks (engine_step_bench.py, profile_step.py): fill an engine with
decoding requests, check a step was pure decode, and time the runner's phases by wrapping bound methods on one
instance (no production code changes)."""

from __future__ import annotations

import time
from typing import Any

import torch

from nanovllm_tui.engine.llm_engine import LLMEngine
from nanovllm_tui.engine.sampling_params import SamplingParams


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def instrument(engine: LLMEngine, device: str) -> dict[str, list[float]]:
    """Time the runner's phases by wrapping its bound methods on this instance only (no production code changes).

    A decode step that samples inside its sampling graph calls neither execute nor sample_device: its GPU wait
    is then timed in collect (the wait for the step's tokens). uninstrument() removes the wrappers."""
    runner = engine.model_runner
    times: dict[str, list[float]] = {"prepare": [], "execute": [], "wait": [], "sample": []}
    prepare, execute, sample, collect = runner.prepare, runner.execute, runner.sample_device, runner.collect

    def timed_prepare(items, ahead=False):
        t = time.perf_counter()
        out = prepare(items, ahead)
        times["prepare"].append(time.perf_counter() - t)
        return out

    def timed_execute(inputs):
        t = time.perf_counter()
        out = execute(inputs)
        times["execute"].append(time.perf_counter() - t)
        return out

    def timed_sample(logits, inputs):
        t = time.perf_counter()
        sync(device)  # the forward's GPU time, seen from the host
        t1 = time.perf_counter()
        out = sample(logits, inputs)
        sync(device)
        times["wait"].append(t1 - t)
        times["sample"].append(time.perf_counter() - t1)
        return out

    def timed_collect(pending):
        t = time.perf_counter()
        if pending.ready is not None:
            pending.ready.synchronize()  # ~0 when timed_sample already waited
        times["wait"].append(time.perf_counter() - t)
        return collect(pending)

    runner.prepare, runner.execute, runner.sample_device = timed_prepare, timed_execute, timed_sample
    runner.collect = timed_collect
    return times


def uninstrument(engine: LLMEngine) -> None:
    runner = engine.model_runner
    del runner.prepare, runner.execute, runner.sample_device, runner.collect


PHASES = (
    (lambda e: e.scheduler, "schedule_ahead"),
    (lambda e: e.scheduler, "commit_ahead"),
    (lambda e: e.model_runner, "launch"),
    (lambda e: e.model_runner, "prepare"),
    (lambda e: e.model_runner, "execute"),
    (lambda e: e.model_runner, "sample_device"),
    (lambda e: e.model_runner, "collect"),
    (lambda e: e, "_process"),
    (lambda e: e, "_record"),
)


def time_phases(engine: LLMEngine) -> dict[str, float]:
    """Wrap the pipelined step's phases on this engine's instances; the dict accumulates seconds per phase."""
    acc: dict[str, float] = {}
    clock = time.perf_counter
    for get, name in PHASES:
        obj = get(engine)
        f = getattr(obj, name)
        key = {"sample_device": "sample", "_process": "process", "_record": "record"}.get(name, name)

        def timed(*args, _f=f, _key=key, **kwargs):
            t0 = clock()
            out = _f(*args, **kwargs)
            acc[_key] = acc.get(_key, 0.0) + clock() - t0
            return out

        setattr(obj, name, timed)
    return acc


def fill_decoding(engine: LLMEngine, batch: int, prompt_len: int, max_tokens: int, vocab: int, stream: bool) -> list:
    """Add `batch` random prompts and step until every one is decoding; returns their Sequences."""
    gen = torch.Generator().manual_seed(batch)
    sp = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    extra: dict[str, Any] = {} if stream else {"stream": False}
    seqs = [
        engine.add_request(
            torch.randint(0, vocab, (prompt_len,), generator=gen).tolist(), sp, detokenize=False, **extra
        )
        for _ in range(batch)
    ]
    sched = engine.scheduler
    while any(s.num_computed_tokens < s.num_prompt_tokens for s in sched.running) or sched.waiting:
        for out in engine.step():  # prefills (and the first decodes of early finishers)
            if out.error:
                print(getattr(engine, "last_traceback", ""))
                raise RuntimeError(f"request {out.request_id} failed: {out.error}")
    return seqs


def drain(engine: LLMEngine, seqs: list) -> None:
    for seq in seqs:
        engine.abort_request(seq.request_id)
    while engine.has_unfinished_requests():
        engine.step()


def decode_steps(engine: LLMEngine, batch: int, steps: int) -> None:
    for _ in range(steps):
        engine.step()
        check_decode(engine, batch)


def check_decode(engine: LLMEngine, batch: int) -> None:
    """The last step decoded exactly `batch` requests and prefilled nothing (else the timing means something else)."""
    last = engine.last_step
    if last is None or last.num_decode_tokens != batch or last.num_prefill_tokens != 0:
        raise RuntimeError(f"not a pure decode step: {last}")
