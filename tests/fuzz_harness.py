"""A real LLMEngine (scheduler, block manager, detokenizer, step logic) over a fake paged model.

The fake model keeps a real paged cache: each step writes (token, position) into the slots the block
tables name, then "attends" by reading every context slot back through the block table; the next
token is a hash of what it read. So the output is a pure function of the request's own history
*as stored in the cache*: a block shared wrongly, evicted while in use, or written to the wrong
slot changes the tokens, and a request run in a crowd must produce exactly what it produces alone.
"""

from __future__ import annotations

import contextlib
import functools
from unittest import mock

from fuzz_fakes import EOS, POISON, VOCAB, FakeStepError, HarnessViolation, PagedFakeRunner, next_token
from fuzz_pipelined_runner import PipelinedFakeRunner

from nanovllm_tui.engine import llm_engine
from nanovllm_tui.engine.config import Config
from nanovllm_tui.engine.llm_engine import LLMEngine
from nanovllm_tui.engine.sampling_params import SamplingParams

# Re-exported: the fuzz tests import the fake model's names from here.
__all__ = [
    "EOS",
    "POISON",
    "VOCAB",
    "FakeEngine",
    "FakeStepError",
    "HarnessViolation",
    "PagedFakeRunner",
    "PipelinedFakeEngine",
    "PipelinedFakeRunner",
    "check_engine",
    "live_seqs",
    "make_engine",
    "next_token",
    "run_alone",
    "run_to_end",
]


class FakeEngine(LLMEngine):
    """LLMEngine with the fake runner injected through its _make_runner seam."""

    def _make_runner(self, config):
        return PagedFakeRunner(config.num_kvcache_blocks, config.kvcache_block_size)


class PipelinedFakeEngine(LLMEngine):
    """LLMEngine over PipelinedFakeRunner (make_engine(pipelined=True) also forces async_scheduling on), with
    Scheduler.schedule_ahead's contract checked at each call: no step ahead while a request waits to be
    admitted, and every running request that goes on is in it."""

    def __init__(self, model: str, **kwargs):
        super().__init__(model, **kwargs)
        sched, runner = self.scheduler, self.model_runner
        plan = sched.schedule_ahead

        def schedule_ahead(items, max_model_len):
            waiting, running = bool(sched.waiting), list(sched.running)
            out = plan(items, max_model_len)
            if out is None:
                runner.num_ahead_declined += not waiting
                return out
            where = f"schedule_ahead before launch #{runner.num_runs + 1}"
            if waiting:
                runner._violation(f"{where}: a step ahead while {len(sched.waiting)} requests wait to be admitted")
            ahead = {id(seq) for seq, _ in out[0]}
            for seq in running:
                if id(seq) not in ahead and seq.num_tokens + 1 < seq.max_num_tokens:
                    runner._violation(f"{where}: running request {seq.request_id} goes on but is not in the step")
            if len(out[0]) > sched.max_num_batched_tokens:
                runner._violation(f"{where}: {len(out[0])} rows exceed max_num_batched_tokens")
            return out

        sched.schedule_ahead = schedule_ahead

    def _make_runner(self, config):
        return PipelinedFakeRunner(config.num_kvcache_blocks, config.kvcache_block_size)


@functools.lru_cache(maxsize=1)
def _model_parts():
    """(model dir, hf config, tokenizer) of the demo model, loaded once per process."""
    from transformers import AutoTokenizer

    from nanovllm_tui.engine.demo_model import ensure_demo_model
    from nanovllm_tui.engine.execution.loader import load_hf_config

    d = str(ensure_demo_model())
    return d, load_hf_config(d), AutoTokenizer.from_pretrained(d)


@contextlib.contextmanager
def _any_block_size(block_size: int):
    """Config takes block sizes >= 16 (the GPU kernels'); the fakes take any, and a small one puts a block
    edge every few tokens. Validates the config at 16, then sets the size."""
    real = Config.from_kwargs

    def from_kwargs(model, **kwargs):
        config = real(model, **{**kwargs, "kvcache_block_size": 16})
        config.kvcache_block_size = block_size
        return config

    with mock.patch.object(Config, "from_kwargs", from_kwargs):
        yield


def make_engine(pipelined: bool = False, **kwargs) -> LLMEngine:
    """A FakeEngine (pipelined: a PipelinedFakeEngine with async_scheduling on); the demo model's config and
    tokenizer are reused so building one takes microseconds. kvcache_block_size may be below 16 here."""
    model_dir, hf_config, tokenizer = _model_parts()
    if pipelined:
        kwargs.setdefault("async_scheduling", True)
    bs = kwargs.get("kvcache_block_size", 16)
    with (
        mock.patch.object(llm_engine, "load_hf_config", lambda d: hf_config),
        mock.patch.object(llm_engine, "load_tokenizer", lambda d: tokenizer),
        _any_block_size(bs) if bs < 16 else contextlib.nullcontext(),
    ):
        return (PipelinedFakeEngine if pipelined else FakeEngine)(model_dir, **kwargs)


def live_seqs(engine: LLMEngine) -> list:
    return list(engine.scheduler.running) + list(engine.scheduler.waiting)


def check_engine(engine: LLMEngine) -> None:
    """Pool invariants plus queue invariants: no request both waiting and running, statuses agree."""
    problems = getattr(engine.model_runner, "problems", ())
    assert not problems, f"the fake runner saw a broken contract ({len(problems)} in all); first:\n{problems[0]}"
    running, waiting = engine.scheduler.running, engine.scheduler.waiting
    engine.block_manager.check_invariants(live_seqs(engine))
    ids_r, ids_w = {id(s) for s in running}, {id(s) for s in waiting}
    assert len(ids_r) == len(running) and len(ids_w) == len(waiting), "a request queued twice"
    assert not ids_r & ids_w, "a request is both waiting and running"
    for s in waiting:
        assert s.status.name == "WAITING" and not s.block_table and s.num_computed_tokens == 0, s.request_id
    caching, bs = engine.block_manager.enable_prefix_caching, engine.block_manager.block_size
    for s in running:
        assert s.status.name == "RUNNING", s.request_id
        assert s.num_computed_tokens <= s.num_tokens
        # Every block whose KV is computed has its hash published (pipelined: once the step's tokens are back).
        assert not caching or s.num_committed_blocks >= s.num_computed_tokens // bs, (
            f"request {s.request_id}: {s.num_computed_tokens // bs} blocks computed, {s.num_committed_blocks} published"
        )
    assert len(running) <= engine.scheduler.max_num_seqs


def run_to_end(engine: LLMEngine, max_steps: int) -> dict[str, dict]:
    """Step until idle (at most max_steps, else AssertionError: livelock); per-request accumulated outputs."""
    got: dict[str, dict] = {}
    for _ in range(max_steps):
        if not engine.has_unfinished_requests():
            return got
        for o in engine.step():
            r = got.setdefault(o.request_id, {"token_ids": [], "text": "", "finish_reason": None})
            r["token_ids"] += o.token_ids
            r["text"] += o.text
            if o.finished:
                r["finish_reason"], r["error"] = o.finish_reason, o.error
        check_engine(engine)
    raise AssertionError(
        f"livelock: requests still unfinished after {max_steps} steps "
        f"(running={[s.request_id for s in engine.scheduler.running]}, "
        f"waiting={[s.request_id for s in engine.scheduler.waiting]})"
    )


def run_alone(engine_kwargs: dict, prompt: list[int], sp: SamplingParams, detokenize: bool) -> dict:
    """The request's outputs when it is the only one in a fresh engine of the same shape."""
    engine = make_engine(**engine_kwargs)
    seq = engine.add_request(prompt, sp, request_id="alone", detokenize=detokenize)
    got = run_to_end(engine, max_steps=4 * (len(prompt) + sp.max_tokens) + 10)
    assert engine.block_manager.num_used == 0
    r = got["alone"]
    assert r["token_ids"] == seq.completion_token_ids
    return r
