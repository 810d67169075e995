"""A real LLMEngine (scheduler, block manager, detokenizer, step logic) over a fake paged model.

The fake model keeps a real paged cache: each step writes (token, position) into the slots the block
tables name, then "attends" by reading every context slot back through the block table; the next
token is a hash of what it read. So the output is a pure function of the request's own history
*as stored in the cache*: a block shared wrongly, evicted while in use, or written to the wrong
slot changes the tokens, and a request run in a crowd must produce exactly what it produces alone.
"""
from __future__ import annotations

import functools
from unittest import mock

import torch

from engine import llm_engine
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams

VOCAB = 49152     # the demo model's tokenizer (real detokenization and stop strings)
EOS = 2           # its eos id (generation_config.json)
POISON = 7        # a prompt starting with this token gets non-finite logits on its first sample


class FakeStepError(RuntimeError):
    """Raised by the fake model when a test asks the next forward to fail."""


def next_token(context: tuple[tuple[int, int], ...], first_sample: bool) -> int:
    """The fake model: deterministic in the (token, position) pairs read from the cache."""
    if first_sample and context[0][0] == POISON:
        return -1  # what ModelRunner.sample returns for a non-finite logits row
    h = hash(context)
    if h % 29 == 0:
        return EOS
    return h % VOCAB


class PagedFakeRunner:
    """Stands in for ModelRunner.run: same contract (a token for each item whose tokens are all computed)."""

    def __init__(self, num_blocks: int, block_size: int):
        self.num_kvcache_blocks = num_blocks
        self.block_size = block_size
        self.cache: list[list[tuple[int, int] | None]] = [[None] * block_size for _ in range(num_blocks)]
        self.fail_next = False
        self.num_runs = 0

    device = torch.device("cpu")  # synchronous, so the engine never pipelines decode steps over it

    def memory_bytes(self) -> int:
        return 0

    def launch(self, items, after=None, keep=None) -> list[int | None]:
        """The engine's launch/collect pair: the fake computes at launch, collect hands the tokens over."""
        return self.run(items)

    def collect(self, tokens: list[int | None]) -> list[int | None]:
        return tokens

    def run(self, items) -> list[int | None]:
        self.num_runs += 1
        if self.fail_next:
            self.fail_next = False
            raise FakeStepError("injected model failure")
        bs = self.block_size
        seen: set[int] = set()
        for seq, n in items:  # 1. write every item's K/V (a real forward writes before attention reads)
            assert id(seq) not in seen, f"request {seq.request_id} scheduled twice in one step"
            seen.add(id(seq))
            assert n >= 1 and seq.num_computed_tokens + n <= seq.num_tokens, (seq.request_id, n)
            assert len(seq.block_table) * bs >= seq.num_computed_tokens + n, "block table too short"
            for p in range(seq.num_computed_tokens, seq.num_computed_tokens + n):
                self.cache[seq.block_table[p // bs]][p % bs] = (seq.token_ids[p], p)
        out: list[int | None] = []
        for seq, n in items:  # 2. read each context back through the block table
            end = seq.num_computed_tokens + n
            if end != seq.num_tokens:
                out.append(None)
                continue
            ctx = tuple(self.cache[seq.block_table[p // bs]][p % bs] for p in range(end))
            assert ctx == tuple((t, p) for p, t in enumerate(seq.token_ids)), \
                f"request {seq.request_id}: KV cache read back differs from its tokens"
            out.append(next_token(ctx, first_sample=end == seq.num_prompt_tokens))
        return out


class FakeEngine(LLMEngine):
    """LLMEngine with the fake runner injected through its _make_runner seam."""

    def _make_runner(self, config):
        return PagedFakeRunner(config.num_kvcache_blocks, config.kvcache_block_size)


@functools.lru_cache(maxsize=1)
def _model_parts():
    """(model dir, hf config, tokenizer) of the demo model, loaded once per process."""
    from transformers import AutoTokenizer

    from engine.demo_model import ensure_demo_model
    from engine.loader import load_hf_config

    d = str(ensure_demo_model())
    return d, load_hf_config(d), AutoTokenizer.from_pretrained(d)


def make_engine(**kwargs) -> FakeEngine:
    """A FakeEngine; the demo model's config and tokenizer are reused so building one takes microseconds."""
    model_dir, hf_config, tokenizer = _model_parts()
    with mock.patch.object(llm_engine, "load_hf_config", lambda d: hf_config), \
            mock.patch.object(llm_engine, "load_tokenizer", lambda d: tokenizer):
        return FakeEngine(model_dir, **kwargs)


def live_seqs(engine: LLMEngine) -> list:
    return list(engine.scheduler.running) + list(engine.scheduler.waiting)


def check_engine(engine: LLMEngine) -> None:
    """Pool invariants plus queue invariants: no request both waiting and running, statuses agree."""
    running, waiting = engine.scheduler.running, engine.scheduler.waiting
    engine.block_manager.check_invariants(live_seqs(engine))
    ids_r, ids_w = {id(s) for s in running}, {id(s) for s in waiting}
    assert len(ids_r) == len(running) and len(ids_w) == len(waiting), "a request queued twice"
    assert not ids_r & ids_w, "a request is both waiting and running"
    for s in waiting:
        assert s.status.name == "WAITING" and not s.block_table and s.num_computed_tokens == 0, s.request_id
    for s in running:
        assert s.status.name == "RUNNING", s.request_id
        assert s.num_computed_tokens <= s.num_tokens
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
    raise AssertionError(f"livelock: requests still unfinished after {max_steps} steps "
                         f"(running={[s.request_id for s in engine.scheduler.running]}, "
                         f"waiting={[s.request_id for s in engine.scheduler.waiting]})")


def run_alone(engine_kwargs: dict, prompt: list[int], sp: SamplingParams, detokenize: bool) -> dict:
    """The request's outputs when it is the only one in a fresh engine of the same shape."""
    engine = make_engine(**engine_kwargs)
    seq = engine.add_request(prompt, sp, request_id="alone", detokenize=detokenize)
    got = run_to_end(engine, max_steps=4 * (len(prompt) + sp.max_tokens) + 10)
    assert engine.block_manager.num_used == 0
    r = got["alone"]
    assert r["token_ids"] == seq.completion_token_ids
    return r
