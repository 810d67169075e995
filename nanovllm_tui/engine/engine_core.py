"""EngineCore: the step loop. Scheduled batches go through the model runner; sampled tokens become output
deltas (stop rules, detokenization); a failed step ends the requests to blame; every step leaves a StepStats.

LLMEngine (llm_engine.py) builds it and adds the request API; the step loop knows nothing of prompts or
tokenizing, and nothing of streaming or UIs (engine/serving wraps the engine).
"""

from __future__ import annotations

import time
import traceback
from typing import Any

from nanovllm_tui.engine.config import Config
from nanovllm_tui.engine.outputs import RequestOutput
from nanovllm_tui.engine.request_check import request_problem
from nanovllm_tui.engine.scheduling.block_manager import BlockManager
from nanovllm_tui.engine.scheduling.scheduler import ScheduledBatch, Scheduler
from nanovllm_tui.engine.scheduling.sequence import Sequence, SequenceStatus
from nanovllm_tui.engine.stats import BlockMap, StepStats
from nanovllm_tui.engine.step_metrics import block_map, classify, step_stats
from nanovllm_tui.engine.text.detokenizer import IncrementalDetokenizer
from nanovllm_tui.engine.tp.runner import EngineDeadError

# A launched decode step: its batch, (prefill, decode, chunked) counts, start time and the runner's handle.
Inflight = tuple[ScheduledBatch, tuple[int, int, int], float, Any]


class EngineCore:
    """The engine's step state: queues, live requests, the step in flight and the running totals."""

    def __init__(self, config: Config, model_runner: Any) -> None:
        self.config = config
        self.model_runner = model_runner
        self.block_manager = BlockManager(
            model_runner.num_kvcache_blocks, config.kvcache_block_size, config.enable_prefix_caching
        )
        self.scheduler = Scheduler(
            self.block_manager,
            config.max_num_seqs,
            config.max_num_batched_tokens,
            config.scheduling_policy,
            config.mixed_prefill_tokens,
        )
        self.requests: dict[str, Sequence] = {}
        self.detokenizers: dict[str, IncrementalDetokenizer] = {}
        self._pending: list[RequestOutput] = []  # outputs decided outside a step (errors at admission, aborts)
        self.num_steps = self.num_prefill_tokens = self.num_decode_tokens = 0
        self.prefix_cache_queries = self.prefix_cache_hits = self.num_preemptions = 0
        self.num_chunked_prefills = 0
        self.collect_block_map = False
        self.last_step: StepStats | None = None
        self.last_traceback: str | None = None  # of the last failed step
        self._inflight: Inflight | None = None  # a launched decode step not yet returned (pipelined decoding)
        self._last_end = 0.0

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_work() or bool(self._pending) or self._inflight is not None

    def _finish(self, seq: Sequence, reason: str, error: str | None = None) -> None:
        seq.finish(reason, error)
        self._pending.append(self._output(seq, [], True))

    def _output(self, seq: Sequence, new_ids: list[int], finished: bool) -> RequestOutput:
        detok = self.detokenizers.get(seq.request_id)
        text = detok.take_delta(final=finished) if detok else ""
        if finished:
            self.requests.pop(seq.request_id, None)
            self.detokenizers.pop(seq.request_id, None)
            if not seq.stream:  # its only output: everything it generated
                new_ids = seq.completion_token_ids
        return RequestOutput(
            seq.request_id, text, new_ids, "", finished, seq.finish_reason if finished else None, seq.error
        )

    # -- the step ------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Schedule, run one forward, sample, and return this step's output deltas.

        Pipelined decoding (config.async_scheduling): a pure decode step is left running on the GPU and
        returned by the next call, which first launches the step after it when the scheduler can already
        tell what that is (Scheduler.schedule_ahead), so host work overlaps the GPU instead of idling it.
        """
        if self._inflight is not None:
            return self._step_pipelined(self._inflight)
        start = time.monotonic()
        batch = self.scheduler.schedule()
        counts = classify(batch)
        outputs, self._pending = self._pending, []
        error = None
        if batch.items:
            try:
                pending = self.model_runner.launch(batch.items)
                if self.config.async_scheduling and counts[1] == len(batch.items):  # pure decode: keep it going
                    self._inflight = (batch, counts, start, pending)
                    return outputs
                tokens = self.model_runner.collect(pending)
            except EngineDeadError:  # the tensor-parallel group is gone: nothing can step any more
                raise
            except Exception as exc:  # one failed forward fails its requests, not the engine
                error = self._fail_step(batch.items, exc, outputs)
            else:
                outputs.extend(self._process(batch, tokens))
        self._record(batch, counts, start, outputs, error)
        return outputs

    def _step_pipelined(self, inflight: Inflight) -> list[RequestOutput]:
        """Launch the next decode step if it is certain, then finish the one in flight (see step())."""
        batch, counts, start, pending = inflight
        start = max(start, self._last_end)  # steps overlap: a step's duration is the time since the last ended
        self._inflight = None
        nxt = None
        outputs, self._pending = self._pending, []
        try:
            ahead = self.scheduler.schedule_ahead(batch.items, self.config.max_model_len)
            if ahead is not None:
                items, keep = ahead
                nxt_batch = ScheduledBatch(items)
                nxt_counts = (0, len(items), 0)  # schedule_ahead only ever schedules decodes
                nxt = (nxt_batch, nxt_counts, time.monotonic(), self.model_runner.launch(items, pending, keep))
            tokens = self.model_runner.collect(pending)
        except EngineDeadError:
            raise
        except Exception as exc:  # as in step(): the requests of both steps fail, the engine goes on
            live = [(seq, n) for seq, n in batch.items if not seq.is_finished]
            error = self._fail_step(live, exc, outputs)
            self._record(batch, counts, start, outputs, error)
            return outputs
        outputs.extend(self._process(batch, tokens))
        self._record(batch, counts, start, outputs, None)
        if nxt is not None:  # the next step's filled blocks can be hashed now that its tokens are known
            self.scheduler.commit_ahead(nxt[0].items)
            self._inflight = nxt
        return outputs

    def _fail_step(self, items: list[tuple[Sequence, int]], exc: Exception, outputs: list[RequestOutput]) -> str:
        """A step raised: end the requests to blame with "error" and return the step's error text.

        The step's requests are checked again (request_check.request_problem): if some have data out of
        bounds, they alone end, each with its own reason, and the others go back to the front of the queue to
        be recomputed, as a preemption would. If none is to blame, every request of the step ends.
        """
        error = f"{type(exc).__name__}: {exc}"
        self.last_traceback = traceback.format_exc()
        problems = [request_problem(seq, self.config) for seq, _ in items]
        blame_all = all(p is None for p in problems)
        requeue = []
        for (seq, _), problem in zip(items, problems):
            if seq in self.scheduler.running:
                self.scheduler.running.remove(seq)
            # The step that was to write these blocks' KV failed: their published hashes must go.
            self.block_manager.free(seq, forget_hashes=True)
            if blame_all or problem is not None:
                seq.finish("error", f"engine step failed: {error}" if blame_all else f"invalid request: {problem}")
                outputs.append(self._output(seq, [], True))
            else:
                requeue.append(seq)
        for seq in reversed(requeue):  # back to the front, in their order
            seq.status = SequenceStatus.WAITING
            seq.num_preemptions += 1
            self.scheduler.waiting.appendleft(seq)
        return error

    def _process(self, batch: ScheduledBatch, tokens: list[int | None]) -> list[RequestOutput]:
        """Append each sampled token, apply the stop rules, and build the step's output deltas.

        Runs over every running request every step, so the common case (a token that finishes nothing)
        is plain attribute reads and, for a streamed request, one RequestOutput; all of a step's tokens share
        one timestamp, and the stop rules were resolved at admission (Sequence.stop_token_ids / max_num_tokens).
        """
        outs: list[RequestOutput] = []
        emit = outs.append
        detoks = self.detokenizers
        done = SequenceStatus.FINISHED
        now = time.monotonic()
        for (seq, n), token in zip(batch.items, tokens):
            if seq.status is done:  # aborted, or stopped, while this pipelined step was in flight
                continue
            seq.num_computed_tokens += n
            if token is None:
                continue
            ids = seq.token_ids
            if (
                token < 0
                or token in seq.stop_token_ids
                or len(ids) + 1 >= seq.max_num_tokens
                or seq.first_token_time is None
                or (detoks and seq.request_id in detoks)
            ):
                self._take_token(seq, token, now, emit)
                continue
            # The common case: a token that finishes nothing, for a request that does not detokenize.
            ids.append(token)
            seq.token_times.append(now)
            if seq.stream:
                emit(RequestOutput(seq.request_id, "", [token]))
        return outs

    def _take_token(self, seq: Sequence, token: int, now: float, emit) -> None:
        """_process for any other token: the first, a failed row, one that may stop, or one to detokenize."""
        if token < 0:
            seq.finish("error", "the model produced non-finite logits (NaN/inf) for this request")
            self.scheduler.remove(seq)
            emit(self._output(seq, [], True))
            return
        ids = seq.token_ids
        ids.append(token)  # Sequence.append_token, inlined with the step's one timestamp
        if seq.first_token_time is None:
            seq.first_token_time = now
        seq.token_times.append(now)
        detok = self.detokenizers.get(seq.request_id)
        if detok is not None:
            detok.add_tokens([token])
        if token in seq.stop_token_ids or (detok is not None and detok.stopped):
            reason = "stop"
        elif len(ids) >= seq.max_num_tokens:
            reason = "length"
        else:
            if seq.stream:
                emit(RequestOutput(seq.request_id, detok.take_delta() if detok is not None else "", [token]))
            return
        seq.finish(reason)
        if detok is not None:
            detok.flush()
        self.scheduler.remove(seq)
        emit(self._output(seq, [token], True))

    def _record(
        self,
        batch: ScheduledBatch,
        counts: tuple[int, int, int],
        start: float,
        outputs: list[RequestOutput],
        error: str | None,
    ) -> None:
        """Add the step to the totals and keep its StepStats as last_step."""
        prefill, decode, chunked = counts
        if batch.items:
            self.num_steps += 1
        self.num_chunked_prefills += chunked
        self.num_prefill_tokens += prefill
        self.num_decode_tokens += decode
        self.prefix_cache_queries += batch.prefix_queries
        self.prefix_cache_hits += batch.prefix_hits
        self.num_preemptions += len(batch.preempted)
        blocks = self.block_map() if self.collect_block_map else None
        duration = time.monotonic() - start
        self.last_step = step_stats(
            self.num_steps, start, duration, batch, counts, self.scheduler, outputs, error, blocks
        )
        self._last_end = time.monotonic()

    def block_map(self) -> BlockMap:
        """Every block's state and first owning request, for the dashboard's heat map."""
        return block_map(self.block_manager, self.scheduler.running)
