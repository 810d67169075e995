"""Offline throughput: every request queued at once, the engine stepped to completion (nano-vllm's bench)."""

from __future__ import annotations

import time
from collections.abc import Callable

from tqdm.auto import tqdm

from nanovllm_tui.bench.results import OfflineResult, percentile
from nanovllm_tui.bench.workload import BenchRequest, total_output_tokens, total_prompt_tokens
from nanovllm_tui.engine import SamplingParams
from nanovllm_tui.engine.stats import StepStats

WARMUP_PROMPT = "Benchmark: "  # nano-vllm's warm-up: llm.generate(["Benchmark: "], SamplingParams())


def warm_up(llm, say: Callable[[str], None] | None = None) -> None:
    """One request with default sampling (nano-vllm's warm-up), so one-time costs stay out of the timed run;
    say() hears `warming up: 1 request…` before and `warm-up done in X s` after (it takes ~40 s on CPU)."""
    tell = say or _silent
    start = time.perf_counter()
    tell("warming up: 1 request…")
    ids = llm.tokenize(WARMUP_PROMPT) or [0]
    sp = SamplingParams(max_tokens=min(64, max(1, llm.config.max_model_len - len(ids))))
    llm.add_request(ids, sp, detokenize=False)
    while llm.has_unfinished_requests():
        llm.step()
    tell(f"warm-up done in {time.perf_counter() - start:.1f} s")


def _silent(line: str) -> None:
    """say() when nobody listens."""


def run_offline(
    llm,
    workload: list[BenchRequest],
    temperature: float,
    warmup: bool = True,
    progress: bool = True,
    on_step: Callable[[StepStats], None] | None = None,
    say: Callable[[str], None] | None = None,
) -> OfflineResult:
    """Queue the whole workload (ignore_eos), step until done; on_step gets engine.last_step after each step;
    say() hears the warm-up's start and end (before the timed run's bar)."""
    if warmup:
        warm_up(llm, say)
    params = [SamplingParams(temperature=temperature, max_tokens=r.max_tokens, ignore_eos=True) for r in workload]
    expected = total_output_tokens(workload)
    bar = tqdm(total=expected, desc="nanovllm-tui", unit="tok", disable=not progress, dynamic_ncols=True)
    steps_before = llm.stats().num_steps
    start = time.perf_counter()
    # Timed like nano-vllm's bench: adding the requests is part of the run.
    # Final outputs only, as LLM.generate asks: the bar moves as requests finish (each carries all its tokens).
    seqs = [
        llm.add_request(list(r.prompt_token_ids), sp, detokenize=False, stream=False) for r, sp in zip(workload, params)
    ]
    errors: list[str] = []
    last = llm.last_step
    while llm.has_unfinished_requests():
        outs = llm.step()
        if on_step is not None and llm.last_step is not None and llm.last_step is not last:
            last = llm.last_step  # a pipelined step call may only launch: nothing new to report
            on_step(last)
        bar.update(sum(len(o.token_ids) for o in outs))
        errors.extend(o.error for o in outs if o.finished and o.finish_reason == "error")
    seconds = time.perf_counter() - start
    bar.close()
    decode_rates = [
        (s.num_completion_tokens - 1) / (s.token_times[-1] - s.first_token_time)
        for s in seqs
        if s.num_completion_tokens > 1 and s.token_times[-1] > s.first_token_time
    ]
    return OfflineResult(
        engine="nanovllm-tui",
        num_requests=len(workload),
        prompt_tokens=total_prompt_tokens(workload),
        output_tokens=sum(s.num_completion_tokens for s in seqs),
        expected_output_tokens=expected,
        seconds=seconds,
        num_errors=len(errors),
        decode_tok_s_per_request_p50=percentile(decode_rates, 50),
        extra={"first_error": errors[0] if errors else None, "num_steps": llm.stats().num_steps - steps_before},
    )
