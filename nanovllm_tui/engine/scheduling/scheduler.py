"""Scheduler: decides which requests run each step and how many tokens each computes.

Two policies, switchable at run time:
- "mixed" (vLLM V1): one token budget per step; running requests first (decodes and unfinished
  chunks), then new requests, any of which may be chunked to fit the budget. While requests are
  decoding, prompts get at most `mixed_prefill_tokens` of a step, so a new prompt delays the others'
  next tokens by a bounded amount (the inter-token latency spike).
- "prefill_first" (nano-vllm): a step of prefills (chunks) whenever one can be scheduled, else a
  step of decodes.
When blocks run out, the newest running request is preempted by recompute: it frees its blocks,
keeps its tokens, and returns to the front of the queue (its recompute may hit the prefix cache).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from nanovllm_tui.engine.config import POLICIES
from nanovllm_tui.engine.scheduling.block_manager import BlockManager
from nanovllm_tui.engine.scheduling.decode_run import DecodeRun
from nanovllm_tui.engine.scheduling.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledBatch:
    """One step's work: (sequence, tokens to compute) pairs plus what happened while choosing them."""

    items: list[tuple[Sequence, int]] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    prefix_queries: int = 0
    prefix_hits: int = 0

    @property
    def num_tokens(self) -> int:
        return sum(n for _, n in self.items)


class Scheduler:
    def __init__(
        self,
        block_manager: BlockManager,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        policy: str = "mixed",
        mixed_prefill_tokens: int = 0,
    ):
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.policy = policy
        self.mixed_prefill_tokens = mixed_prefill_tokens  # 0 = prompts may use the whole budget
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._run: DecodeRun | None = None  # the pipelined decode run schedule_ahead last returned

    def set_policy(self, policy: str) -> None:
        if policy not in POLICIES:
            raise ValueError(f"scheduling policy {policy!r}; choose one of {', '.join(POLICIES)}")
        self.policy = policy

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch:
        self._run = None
        batch = ScheduledBatch()
        if self.policy == "prefill_first":
            self._schedule_prefills(batch, self.max_num_batched_tokens)
            if not batch.items:
                self._schedule_running(batch, self.max_num_batched_tokens, decodes_only=True)
        else:
            budget = prompt_budget = self.max_num_batched_tokens
            if self.mixed_prefill_tokens and self._any_decoding():
                prompt_budget = min(budget, self.mixed_prefill_tokens)
            budget, prompt_budget = self._schedule_running(
                batch, budget, decodes_only=False, prompt_budget=prompt_budget
            )
            if not batch.preempted:
                self._schedule_waiting(batch, min(budget, prompt_budget))
        return batch

    def _any_decoding(self) -> bool:
        """Does a running request decode this step? (Usually the first one does, so this is cheap.)"""
        return any(len(seq.token_ids) - seq.num_computed_tokens == 1 for seq in self.running)

    def schedule_ahead(
        self, items: list[tuple[Sequence, int]], max_model_len: int
    ) -> tuple[list[tuple[Sequence, int]], list[int] | None] | None:
        """The next decode step while this one (`items`, all decodes) is still on the GPU, if it is certain.

        It is what schedule() will decide once the tokens are back, whatever they are: no request waits
        to be admitted, every running request is in `items` and gets one more token (those that reach
        max_tokens / max_model_len with this step's token drop out), and blocks for it are free (else the
        full schedule, which may preempt, decides). Returns (items, their indices in `items` if some
        dropped out) or None; when all go on, the very `items` list comes back, and the run of steps
        over it is tracked in numpy (DecodeRun) so that a step costs no pass over the requests.
        Block hashes of blocks the next step fills are committed once the tokens are known
        (commit_ahead), as no other request can be admitted in between.
        """
        if self.waiting:
            return None
        run = self._run
        if run is not None and run.items is items and len(self.running) == len(items):
            # Nobody left the batch since it was scheduled (a finish or abort leaves `running`), so every
            # row got its token: the same list, one step on, unless a row now stops at its length limit.
            run.advance()
            if not run.any_stops():
                bm = self.block_manager
                for i in run.rows_short_of_room():  # a block edge: a few rows per step at most
                    if not bm.allocate_slots(run.seqs[i], 2):
                        self._run = None
                        return None
                    run.grew(i)
                return items, None
        self._run = None
        if any(seq.sampling_params.penalized for seq, _ in items):
            return None  # penalties count every output token: the next step must wait for this one's tokens
        running = SequenceStatus.RUNNING
        live = [(i, seq) for i, (seq, _) in enumerate(items) if seq.status is running]
        if len(live) != len(self.running) or len(live) > self.max_num_batched_tokens:
            return None
        keep = [(i, seq) for i, seq in live if len(seq.token_ids) + 1 < min(max_model_len, seq.max_num_tokens)]
        if not keep:
            return None
        bm = self.block_manager
        bs = bm.block_size
        for _, seq in keep:  # KV room for this step's token and the next one
            if seq.num_computed_tokens + 2 > len(seq.block_table) * bs and not bm.allocate_slots(seq, 2):
                return None
        if len(keep) == len(items):
            nxt, indices = items, None
        else:
            nxt, indices = [(seq, 1) for _, seq in keep], [i for i, _ in keep]
        self._run = DecodeRun(nxt, bs, max_model_len)
        return nxt, indices

    def commit_ahead(self, items: list[tuple[Sequence, int]]) -> None:
        """Publish the hashes of blocks the step launched ahead (`items`) fills, now that its tokens are known."""
        bm = self.block_manager
        bs = bm.block_size
        run = self._run
        if run is not None and run.items is items:
            seqs = [run.seqs[i] for i in run.rows_filling_a_block()]
        else:
            seqs = [seq for seq, _ in items]
        done = SequenceStatus.FINISHED
        for seq in seqs:
            # Called only when a block fills (commit_full_blocks' own early return, without the call).
            if seq.status is not done and (seq.num_computed_tokens + 1) // bs > seq.num_committed_blocks:
                bm.commit_full_blocks(seq, seq.num_computed_tokens + 1)

    def _add_item(self, batch: ScheduledBatch, seq: Sequence, n: int) -> None:
        # Publish hashes now, not after the step: a request admitted later in this same step can
        # then share these blocks (each layer writes K/V before any attention reads it).
        batch.items.append((seq, n))
        self.block_manager.commit_full_blocks(seq, seq.num_computed_tokens + n)

    def _schedule_running(
        self, batch: ScheduledBatch, budget: int, decodes_only: bool, prompt_budget: int | None = None
    ) -> tuple[int, int]:
        """Give running requests their next tokens, oldest first, preempting the newest when blocks run out.

        Unfinished prompts take at most prompt_budget tokens in all. Returns (budget, prompt_budget) left.
        """
        if prompt_budget is None:
            prompt_budget = budget
        bm = self.block_manager
        bs = bm.block_size
        running = self.running
        append = batch.items.append
        i, count = 0, len(running)
        # The hot loop of every decode step: plain attribute reads, no calls unless a block boundary is crossed.
        while i < count and budget > 0:
            seq = running[i]
            computed = seq.num_computed_tokens
            uncomputed = len(seq.token_ids) - computed
            if uncomputed > 1:
                if decodes_only or prompt_budget <= 0:
                    i += 1
                    continue
                n = min(uncomputed, budget, prompt_budget)
                prompt_budget -= n
            else:
                n = uncomputed
            end = computed + n
            if end > len(seq.block_table) * bs:
                while not bm.allocate_slots(seq, n):
                    victim = running.pop()
                    count -= 1
                    self._preempt(victim, batch)
                    if victim is seq:
                        return budget, prompt_budget
            append((seq, n))
            if end // bs > seq.num_committed_blocks:
                bm.commit_full_blocks(seq, end)
            budget -= n
            i += 1
        return budget, prompt_budget

    def _schedule_prefills(self, batch: ScheduledBatch, budget: int) -> None:
        """prefill_first: unfinished chunks of running requests, then new ones; no preemption needed to admit."""
        for seq in self.running:
            if budget <= 0:
                return
            if seq.num_uncomputed_tokens > 1:
                n = min(seq.num_uncomputed_tokens, budget)
                if not self.block_manager.allocate_slots(seq, n):
                    break
                self._add_item(batch, seq, n)
                budget -= n
        self._schedule_waiting(batch, budget)

    def _schedule_waiting(self, batch: ScheduledBatch, budget: int) -> None:
        """Admit waiting requests in order while the budget, the sequence cap and the blocks allow."""
        bm = self.block_manager
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            cached = bm.find_cached_prefix(seq)
            num_cached = len(cached) * bm.block_size
            n = min(seq.num_tokens - num_cached, budget)
            if not bm.allocate_slots(seq, n, cached):
                break
            self.waiting.popleft()
            batch.prefix_queries += seq.num_tokens
            batch.prefix_hits += num_cached
            if not seq.admitted:
                seq.admitted = True
                seq.num_cached_tokens = num_cached
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            self._add_item(batch, seq, n)
            budget -= n

    def _preempt(self, seq: Sequence, batch: ScheduledBatch) -> None:
        scheduled = any(s is seq for s, _ in batch.items)
        # If it was already scheduled this step its new blocks' hashes were published but will not be written.
        self.block_manager.free(seq, forget_hashes=scheduled)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.waiting.appendleft(seq)
        batch.preempted.append(seq)
        # A victim scheduled earlier in this step must not run with its freed blocks.
        batch.items = [(s, n) for s, n in batch.items if s is not seq]

    def remove(self, seq: Sequence) -> None:
        """Take a finished or aborted request out of the queues and free its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.block_manager.free(seq)
