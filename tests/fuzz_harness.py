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
import itertools
from dataclasses import dataclass
from unittest import mock

import numpy as np
import torch

from nanovllm_tui.engine import llm_engine
from nanovllm_tui.engine.config import Config
from nanovllm_tui.engine.execution.input_builder import BuiltInputs, InputBuilder
from nanovllm_tui.engine.llm_engine import LLMEngine
from nanovllm_tui.engine.sampling_params import SamplingParams
from nanovllm_tui.engine.scheduling.sequence import Sequence, SequenceStatus

VOCAB = 49152  # the demo model's tokenizer (real detokenization and stop strings)
EOS = 2  # its eos id (generation_config.json)
POISON = 7  # a prompt starting with this token gets non-finite logits on its first sample


class FakeStepError(RuntimeError):
    """Raised by the fake model when a test asks the next forward to fail."""


class HarnessViolation(AssertionError):
    """A broken contract seen by a fake runner. The engine turns a failed step into request errors, so each
    violation is also kept in runner.problems, and check_engine raises the first one."""


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
        self.fail_next: bool | str = False  # True / "launch": the next launch raises; "collect": the next collect
        self.num_runs = 0
        self.label = ""  # put in front of every violation (tests write their seed / shape here)
        self.problems: list[str] = []

    device = torch.device("cpu")  # synchronous, so the engine never pipelines decode steps over it

    def memory_bytes(self) -> int:
        return 0

    def launch(self, items, after=None, keep=None) -> list[int | None]:
        """The engine's launch/collect pair: the fake computes at launch, collect hands the tokens over."""
        return self.run(items)

    def collect(self, tokens: list[int | None]) -> list[int | None]:
        return tokens

    def _violation(self, msg: str) -> None:
        msg = f"{self.label} {msg}".strip()
        self.problems.append(msg)
        raise HarnessViolation(msg)

    def run(self, items) -> list[int | None]:
        self.num_runs += 1
        if self.fail_next:
            self.fail_next = False
            raise FakeStepError("injected model failure")
        try:
            return self._run(items)
        except AssertionError as exc:  # the engine would swallow it into request errors: keep it for check_engine
            self.problems.append(f"{self.label} run #{self.num_runs}: {exc}".strip())
            raise

    def _run(self, items) -> list[int | None]:
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
            assert ctx == tuple((t, p) for p, t in enumerate(seq.token_ids)), (
                f"request {seq.request_id}: KV cache read back differs from its tokens"
            )
            out.append(next_token(ctx, first_sample=end == seq.num_prompt_tokens))
        return out


def decodes_first(items: list[tuple[Sequence, int]]) -> list[tuple[Sequence, int]]:
    """ModelRunner.launch's row order for a fresh step: one-query rows first, otherwise in order; `items`
    itself if already so (as ModelRunner: InputBuilder's reuse across steps keys on the list's identity)."""
    ordered = [it for it in items if it[1] == 1] + [it for it in items if it[1] != 1]
    return items if all(a is b for a, b in zip(ordered, items)) else ordered


@dataclass
class FakeStep:
    """A step launched by PipelinedFakeRunner; its fake forward runs when it is collected."""

    index: int
    launched: list[tuple[Sequence, int]]  # the list launch() was given (the engine may pass it again)
    items: list[tuple[Sequence, int]]  # a copy, for the checks
    starts: list[int]  # first position each row computes (one past the host state for an ahead step)
    slots: list[list[int]]  # the cache slot of each position a row computes, from its block table at launch
    tables: list[list[int]]  # block tables at launch (copies): what the device reads through
    ids: list[list[int]] | None  # tokens each row writes (None for an ahead step: they come from `after`)
    after: FakeStep | None
    keep: list[int] | None
    tokens: list[int | None] | None = None  # once collected, one per item


class PipelinedFakeRunner(PagedFakeRunner):
    """PagedFakeRunner with ModelRunner's launch/collect split, for pipelined decoding (async_scheduling).

    launch() runs the real InputBuilder (one instance, as ModelRunner keeps, so its cross-step reuse is
    exercised) and checks every tensor against a plain reconstruction from the sequences' host state;
    the forward is deferred to collect(), as the GPU would be. A step launched ahead of the one in flight
    (`after`) has its rows one token past the host state and takes its input tokens from `after`'s sampled
    tokens at `keep`. The tokens are the same pure function of the cache as PagedFakeRunner's, so a
    pipelined engine must produce exactly what a synchronous one does.
    """

    def __init__(self, num_blocks: int, block_size: int):
        super().__init__(num_blocks, block_size)
        self.builder = InputBuilder(torch.device("cpu"), block_size)
        self._queue: list[FakeStep] = []  # launched and not yet collected, oldest first
        # Coverage: ahead launches, those given the in-flight step's very list again (the engine's fast paths
        # key on it), those with rows dropped (keep), ahead rows opening a block, and ahead rows whose
        # request finished (stop token / abort) before the step came back.
        self.num_ahead_launches = self.num_ahead_same_list = self.num_ahead_partial = 0
        self.num_ahead_block_edges = self.num_ahead_discarded = 0
        self.num_ahead_declined = 0  # schedule_ahead said no with no request waiting (PipelinedFakeEngine counts)

    def launch(self, items, after: FakeStep | None = None, keep: list[int] | None = None) -> FakeStep:
        self.num_runs += 1
        ahead = after is not None
        where = f"launch #{self.num_runs}{' (ahead)' if ahead else ''}"
        if self.fail_next and self.fail_next != "collect":
            self.fail_next = False
            self._queue.clear()  # the engine drops a step still in flight with the failed one
            raise FakeStepError("injected model failure")
        self._check_order(items, after, keep, where)
        rows = self._rows(items, ahead, where)
        ordered = items if ahead else decodes_first(items)
        built = self.builder.build(ordered, None, ahead=ahead)
        self._check_inputs(built, ordered, ahead, where)
        step = FakeStep(
            self.num_runs,
            items,
            list(items),
            [r[0] for r in rows],
            [r[1] for r in rows],
            [list(seq.block_table) for seq, _ in items],
            None if ahead else [seq.token_ids[st : st + n] for (seq, n), (st, _) in zip(items, rows)],
            after,
            None if keep is None else list(keep),
        )
        self._queue.append(step)
        if ahead:
            self.num_ahead_launches += 1
            self.num_ahead_same_list += items is after.launched
            self.num_ahead_partial += keep is not None
            self.num_ahead_block_edges += sum(st % self.block_size == 0 for st in step.starts)
        return step

    def _check_order(self, items, after: FakeStep | None, keep: list[int] | None, where: str) -> None:
        """A fresh step only when nothing is in flight; an ahead step follows the step in flight, pure decode,
        with exactly its rows at `keep` (None = all), each a running request that continues past it."""
        if after is None:
            if keep is not None:
                self._violation(f"{where}: keep={keep} without a step in flight")
            if self._queue:
                self._violation(f"{where}: a fresh step launched while launch #{self._queue[0].index} is uncollected")
            return
        if len(self._queue) != 1 or self._queue[0] is not after:
            self._violation(
                f"{where}: `after` is launch #{after.index}, but in flight are {[s.index for s in self._queue]}"
            )
        if any(n != 1 for _, n in after.items):
            self._violation(f"{where}: launched ahead of launch #{after.index}, which is not pure decode")
        m = len(after.items)
        idx = list(range(m)) if keep is None else list(keep)
        if keep is not None and (
            not idx or idx[0] < 0 or idx[-1] >= m or any(b <= a for a, b in itertools.pairwise(idx))
        ):
            self._violation(f"{where}: keep={keep} is not increasing indices into {m} in-flight rows")
        want = [after.items[i][0].request_id for i in idx]
        if [seq.request_id for seq, _ in items] != want or any(n != 1 for _, n in items):
            self._violation(
                f"{where}: ahead items {[(s.request_id, n) for s, n in items]} are not the in-flight "
                f"rows at keep={keep}: {want}"
            )
        for seq, _ in items:
            if seq.status is not SequenceStatus.RUNNING or seq.num_computed_tokens + 1 != seq.num_tokens:
                self._violation(
                    f"{where}: request {seq.request_id} ({seq.status.name}, {seq.num_computed_tokens} "
                    f"of {seq.num_tokens} computed) is not a decode in flight"
                )
            if seq.num_tokens + 1 >= seq.max_num_tokens:
                self._violation(
                    f"{where}: request {seq.request_id} ends by length with the token in flight "
                    f"({seq.num_tokens} + 1 of {seq.max_num_tokens}) but was launched ahead"
                )

    def _rows(self, items, ahead: bool, where: str) -> list[tuple[int, list[int]]]:
        """(first position, slots) of each row from the host state (+1 ahead), checking the KV room."""
        bs = self.block_size
        seen: set[int] = set()
        rows = []
        for seq, n in items:
            if id(seq) in seen:
                self._violation(f"{where}: request {seq.request_id} scheduled twice in one step")
            seen.add(id(seq))
            start, total, tbl = seq.num_computed_tokens + ahead, seq.num_tokens + ahead, seq.block_table
            if n < 1 or start + n > total:
                self._violation(f"{where}: request {seq.request_id}: {n} tokens from {start} of {total}")
            if len(tbl) * bs < start + n:
                self._violation(
                    f"{where}: request {seq.request_id}: block table of {len(tbl)} blocks is too short "
                    f"for positions up to {start + n - 1}"
                )
            rows.append((start, [tbl[p // bs] * bs + p % bs for p in range(start, start + n)]))
        return rows

    def _check_inputs(self, built: BuiltInputs, ordered, ahead: bool, where: str) -> None:
        """Every tensor InputBuilder built, against a per-token reconstruction from the host state
        (as tests/test_input_builder.py's reference(), plus the ahead shift and the sampling fields)."""
        bs = self.block_size
        ids, pos, slots, cu, ctx, sample_rows, offsets, samplers = [], [], [], [0], [], [], [], []
        for seq, n in ordered:
            start, total = seq.num_computed_tokens + ahead, seq.num_tokens + ahead
            for p in range(start, start + n):
                if not ahead:
                    ids.append(seq.token_ids[p])
                pos.append(p)
                slots.append(seq.block_table[p // bs] * bs + p % bs)
            cu.append(cu[-1] + n)
            ctx.append(start + n)
            if start + n == total:
                sample_rows.append(cu[-1] - 1)
                offsets.append(total)
                samplers.append(seq)
        width = max(len(seq.block_table) for seq, _ in ordered)
        sps = [seq.sampling_params for seq in samplers]
        f32 = lambda xs: [float(np.float32(x)) for x in xs]  # noqa: E731 - the buffers are float32
        want = dict(
            positions=pos,
            slot_mapping=slots,
            context_lens=ctx,
            cu_seqlens_q=cu,
            block_tables=[seq.block_table + [-1] * (width - len(seq.block_table)) for seq, _ in ordered],
            sample_rows=sample_rows,
            offsets=offsets,
            temperatures=f32(sp.temperature for sp in sps),
            top_ks=[sp.top_k for sp in sps],
            top_ps=f32(sp.top_p for sp in sps),
        )
        if not ahead:  # an ahead step's ids are the tokens still being sampled: the runner copies them in
            want["input_ids"] = ids
        t = built.tensors
        for name, w in want.items():
            got = t[name].tolist()
            if got != w:
                i = next((i for i, (a, b) in enumerate(zip(got, w)) if a != b), min(len(got), len(w)))
                self._violation(
                    f"{where}: InputBuilder {name} differs at index {i}: built {got[i] if i < len(got) else '<end>'}, "
                    f"expected {w[i] if i < len(w) else '<end>'}\n  built    {got}\n  expected {w}\n  rows "
                    f"(request, n, computed, tokens, blocks): "
                    f"{[(s.request_id, n, s.num_computed_tokens, s.num_tokens, len(s.block_table)) for s, n in ordered]}"
                )
        seeds = t["seeds"].tolist()
        for i, sp in enumerate(sps):
            if sp.seed is not None and seeds[i] != ((sp.seed & (2**64 - 1)) ^ 2**63) - 2**63:
                self._violation(f"{where}: seeds[{i}] = {seeds[i]} is not request {samplers[i].request_id}'s seed")
        ns = [n for _, n in ordered]
        num_decode = next((i for i, n in enumerate(ns) if n != 1), len(ns))
        scalars = dict(
            num_rows=(built.num_rows, len(ordered)),
            num_samples=(built.num_samples, len(samplers)),
            samplers=([s.request_id for s in built.samplers], [s.request_id for s in samplers]),
            is_decode=(built.is_decode, num_decode == len(ns)),
            num_decode_rows=(built.num_decode_rows, num_decode),
            num_decode_tensor=(int(t["num_decode"][0]), num_decode),
            max_seqlen_q=(built.max_seqlen_q, max(ns)),
            max_seqlen_k=(built.max_seqlen_k, max(ctx)),
            all_greedy=(built.all_greedy, all(sp.temperature == 0 for sp in sps)),
            use_top_k=(built.use_top_k, any(sp.top_k != -1 for sp in sps)),
            use_top_p=(built.use_top_p, any(sp.top_p < 1 for sp in sps)),
        )
        for name, (got, w) in scalars.items():
            if got != w:
                self._violation(f"{where}: InputBuilder {name} = {got}, expected {w}")

    def collect(self, step: FakeStep) -> list[int | None]:
        """The deferred forward: write what the step was launched to write, then read each live row's context.

        By now the engine has processed the step before (host state = a synchronous engine's at launch).
        A row whose request finished meanwhile still writes (the device would) and gets a dummy token.
        """
        where = f"collect of launch #{step.index}"
        if self.fail_next == "collect":
            self.fail_next = False
            self._queue.clear()
            raise FakeStepError("injected failure reading a step's tokens back")
        if not self._queue or self._queue[0] is not step:
            self._violation(f"{where}: collected out of launch order (uncollected: {[s.index for s in self._queue]})")
        self._queue.pop(0)
        bs, cache = self.block_size, self.cache
        inputs = None  # an ahead step's input tokens: what the step before sampled for its rows at `keep`
        if step.after is not None:
            src = step.after.tokens
            if src is None:
                self._violation(f"{where}: ahead step collected before launch #{step.after.index} it follows")
            inputs = [src[i] for i in (range(len(src)) if step.keep is None else step.keep)]
        for i, (slots, start) in enumerate(zip(step.slots, step.starts)):  # 1. every row writes its K/V
            ids = step.ids[i] if inputs is None else [max(inputs[i], 0)]  # ModelRunner clamps a failed row's -1
            for j, slot in enumerate(slots):
                cache[slot // bs][slot % bs] = (ids[j], start + j)
        out: list[int | None] = []
        for i, (seq, n) in enumerate(step.items):  # 2. each live row reads its context back
            start, tbl = step.starts[i], step.tables[i]
            if seq.status is SequenceStatus.FINISHED:  # aborted or stopped while in flight: the engine ignores it
                self.num_ahead_discarded += inputs is not None
                out.append(0)
                continue
            if seq.num_computed_tokens != start or seq.block_table[: len(tbl)] != tbl:
                self._violation(
                    f"{where}: request {seq.request_id} moved under the step: {seq.num_computed_tokens} "
                    f"computed (launched at {start}), block table {seq.block_table} (launched {tbl})"
                )
            end = start + n
            if end != seq.num_tokens:
                if inputs is not None:
                    self._violation(
                        f"{where}: ahead row {seq.request_id} at {start} but the request has {seq.num_tokens} tokens"
                    )
                out.append(None)
                continue
            if inputs is not None and seq.token_ids[start] != inputs[i]:
                self._violation(
                    f"{where}: request {seq.request_id}: its token {start} is {seq.token_ids[start]} but "
                    f"the ahead step's input was {inputs[i]} (keep={step.keep})"
                )
            ctx = tuple(cache[tbl[p // bs]][p % bs] for p in range(end))
            if ctx != tuple((t, p) for p, t in enumerate(seq.token_ids)):
                p = next(p for p, t in enumerate(seq.token_ids) if ctx[p] != (t, p))
                self._violation(
                    f"{where}: request {seq.request_id}: KV cache read back {ctx[p]} at position {p}, "
                    f"its token there is {seq.token_ids[p]}"
                )
            out.append(next_token(ctx, first_sample=end == seq.num_prompt_tokens))
        step.tokens, step.after = out, None  # no chain of collected steps kept alive
        return out


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
