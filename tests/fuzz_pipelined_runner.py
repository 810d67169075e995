"""PipelinedFakeRunner: the fuzz harness's fake runner with ModelRunner's launch/collect split, checking every
input InputBuilder builds (tests/fuzz_harness.py builds engines over it)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
from fuzz_fakes import FakeStepError, PagedFakeRunner, next_token

from nanovllm_tui.engine.execution.input_builder import BuiltInputs, InputBuilder
from nanovllm_tui.engine.scheduling.sequence import Sequence, SequenceStatus


def decodes_first(items: list[tuple[Sequence, int]]) -> list[tuple[Sequence, int]]:
    """ModelRunner.launch's row order for a fresh step: one-query rows first, otherwise in order; `items`
    itself if already so (as ModelRunner: InputBuilder's reuse across steps keys on the list's identity)."""
    ordered = [it for it in items if it[1] == 1] + [it for it in items if it[1] != 1]
    return items if all(a is b for a, b in zip(ordered, items)) else ordered


def expected_inputs(ordered, ahead: bool, bs: int) -> tuple[dict[str, list], list[Sequence], list[int]]:
    """The step tensors InputBuilder must build for `ordered` rows, reconstructed token by token from the host
    state: (tensor name -> values, the sampled sequences, each row's context length)."""
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
    want: dict[str, list] = dict(
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
    return want, samplers, ctx


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
        want, samplers, ctx = expected_inputs(ordered, ahead, self.block_size)
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
        sps = [seq.sampling_params for seq in samplers]
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
