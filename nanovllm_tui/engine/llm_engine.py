"""LLMEngine: requests in, one scheduled forward per step(), RequestOutput deltas and stats out.

The engine is single-threaded and knows nothing of streaming or UIs; engine.service wraps it.
"""

from __future__ import annotations

import time
import traceback

from nanovllm_tui.engine.config import Config
from nanovllm_tui.engine.execution.loader import load_hf_config
from nanovllm_tui.engine.execution.model_runner import ModelRunner
from nanovllm_tui.engine.outputs import RequestOutput
from nanovllm_tui.engine.sampling_params import SamplingParams
from nanovllm_tui.engine.scheduling.block_manager import BlockManager
from nanovllm_tui.engine.scheduling.scheduler import ScheduledBatch, Scheduler
from nanovllm_tui.engine.scheduling.sequence import Sequence, SequenceStatus
from nanovllm_tui.engine.stats import CACHED, FREE, SHARED, USED, BlockMap, EngineStats, StepStats
from nanovllm_tui.engine.text.detokenizer import IncrementalDetokenizer
from nanovllm_tui.engine.text.prompt_check import check_prompt_text
from nanovllm_tui.engine.text.tokenizer import eos_token_ids, load_tokenizer
from nanovllm_tui.engine.tp.runner import EngineDeadError


class LLMEngine:
    def __init__(self, model: str, **kwargs):
        config = Config.from_kwargs(model, **kwargs)
        config.hf_config = load_hf_config(config.model)
        max_pos = getattr(config.hf_config, "max_position_embeddings", None)
        if max_pos:
            config.max_model_len = min(config.max_model_len, max_pos)
        self.config = config
        self.tokenizer = load_tokenizer(config.model)
        config.eos_token_ids = eos_token_ids(config.model, config.hf_config, self.tokenizer)
        self.model_runner = self._make_runner(config)
        if config.async_scheduling is None:
            config.async_scheduling = self.model_runner.device.type == "cuda"
        self.block_manager = BlockManager(
            self.model_runner.num_kvcache_blocks, config.kvcache_block_size, config.enable_prefix_caching
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
        self._inflight: tuple | None = None  # a launched decode step not yet returned (pipelined decoding)
        self._last_end = 0.0

    def _make_runner(self, config: Config):
        if config.tensor_parallel_size > 1:  # rank 0 runs here; ranks 1..N-1 are worker processes
            from nanovllm_tui.engine.tp.runner import TPModelRunner

            return TPModelRunner(config)
        return ModelRunner(config)

    def shutdown(self) -> None:
        """Stop the tensor-parallel workers, if any (also done at exit); the engine cannot step after this."""
        stop = getattr(self.model_runner, "shutdown", None)
        if stop is not None:
            stop()

    def rank_memory_bytes(self) -> list[int]:
        """Memory held by each tensor-parallel rank, rank 0 first (CUDA: allocated bytes; CPU: weights + KV cache)."""
        runner = self.model_runner
        return runner.rank_memory_bytes() if hasattr(runner, "rank_memory_bytes") else [runner.memory_bytes()]

    # -- requests ------------------------------------------------------------------------------
    def tokenize(self, prompt: str | list[int]) -> list[int]:
        """Token ids of a text prompt (or a copy of given ids); ValueError if the text can't be tokenized."""
        if isinstance(prompt, str):
            if not prompt:
                return []
            check_prompt_text(prompt, self.config.max_model_len, self.tokenizer)
            try:
                return self.tokenizer.encode(prompt, add_special_tokens=False)
            except Exception as exc:  # a tokenizer failure is this request's problem, not the engine's
                raise ValueError(
                    f"cannot tokenize the prompt ({type(exc).__name__}: {exc}); send plain text or token ids"
                ) from exc
        if not isinstance(prompt, (list, tuple)):
            raise ValueError(f"prompt must be a string or a list of token ids, got {type(prompt).__name__}")
        return list(prompt)

    def validate_request(self, prompt: str | list[int], sampling_params: SamplingParams | None = None) -> list[int]:
        """Tokenize and check a request without queueing it; reads only config and tokenizer, so any thread may call it."""
        sp = sampling_params or SamplingParams()
        if not isinstance(sp, SamplingParams):
            raise ValueError(f"sampling_params must be a SamplingParams, got {type(sp).__name__}")
        ids = self.tokenize(prompt)
        if not ids:
            raise ValueError("prompt is empty; send at least one token")
        vocab = self.config.hf_config.vocab_size
        if any(not isinstance(t, int) or t < 0 or t >= vocab for t in ids):
            raise ValueError(f"prompt token ids must be integers in [0, {vocab}); got one outside it")
        limit = self.config.max_model_len
        if len(ids) + sp.max_tokens > limit:
            raise ValueError(
                f"prompt ({len(ids)} tokens) + max_tokens ({sp.max_tokens}) = {len(ids) + sp.max_tokens} "
                f"exceeds max_model_len={limit}; shorten the prompt, lower max_tokens or raise --max-model-len"
            )
        return ids

    def add_request(
        self,
        prompt: str | list[int],
        sampling_params: SamplingParams | None = None,
        request_id: str | None = None,
        detokenize: bool = True,
        stream: bool = True,
    ) -> Sequence:
        """Validate and queue a request; raises ValueError naming the bad value and the limit.

        stream: step() returns an output for this request every step it gets tokens (its deltas); False: only
        the final output, which then carries every completion token and the whole text (batch callers).
        """
        sp = sampling_params or SamplingParams()
        ids = self.validate_request(prompt, sp)
        if request_id is not None and request_id in self.requests:
            raise ValueError(f"request_id {request_id!r} is already in use; pass a unique id or None")
        seq = Sequence(ids, sp, request_id, self.config.eos_token_ids, self.config.max_model_len)
        seq.stream = stream
        self.requests[seq.request_id] = seq
        if detokenize:
            self.detokenizers[seq.request_id] = IncrementalDetokenizer(self.tokenizer, sp.stop)
        capacity = self.block_manager.num_blocks * self.block_manager.block_size
        if len(ids) + sp.max_tokens > capacity:
            self._finish(
                seq,
                "error",
                f"request needs up to {len(ids) + sp.max_tokens} tokens of KV cache but the "
                f"whole cache holds {capacity}; raise --num-kvcache-blocks / --kv-cache-memory",
            )
        else:
            self.scheduler.add(seq)
        return seq

    def abort_request(self, request_id: str) -> bool:
        """Finish a request with "abort" and free its blocks now; False if it is unknown or already done."""
        seq = self.requests.get(request_id)
        if seq is None or seq.is_finished:
            return False
        self.scheduler.remove(seq)
        self._finish(seq, "abort")
        return True

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
            return self._step_pipelined()
        start = time.monotonic()
        batch = self.scheduler.schedule()
        counts = self._classify(batch)
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
                error = f"{type(exc).__name__}: {exc}"
                self.last_traceback = traceback.format_exc()
                outputs.extend(self._fail_batch(batch, error))
            else:
                outputs.extend(self._process(batch, tokens))
        self._record(batch, counts, start, outputs, error)
        return outputs

    def _step_pipelined(self) -> list[RequestOutput]:
        """Launch the next decode step if it is certain, then finish the one in flight (see step())."""
        batch, counts, start, pending = self._inflight
        start = max(start, self._last_end)  # steps overlap: a step's duration is the time since the last ended
        self._inflight = None
        nxt = None
        outputs, self._pending = self._pending, []
        error = None
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
            error = f"{type(exc).__name__}: {exc}"
            self.last_traceback = traceback.format_exc()
            live = [(seq, n) for seq, n in batch.items if not seq.is_finished]
            outputs.extend(self._fail_batch(ScheduledBatch(live), error))
            self._record(batch, counts, start, outputs, error)
            return outputs
        outputs.extend(self._process(batch, tokens))
        self._record(batch, counts, start, outputs, error)
        if nxt is not None:  # the next step's filled blocks can be hashed now that its tokens are known
            self.scheduler.commit_ahead(nxt[0].items)
            self._inflight = nxt
        return outputs

    @staticmethod
    def _classify(batch: ScheduledBatch) -> tuple[int, int, int]:
        """(prefill tokens, decode tokens, prefills cut short by the budget), before the step runs."""
        items = batch.items
        prefill = chunked = 0
        decode = len(items)
        for seq, n in items:  # runs every step over every request: plain attribute reads, decodes fall through
            num_tokens = len(seq.token_ids)
            if n != 1 or num_tokens != seq.num_computed_tokens + 1 or num_tokens <= seq.num_prompt_tokens:
                decode -= 1
                prefill += n
                chunked += n < num_tokens - seq.num_computed_tokens
        return prefill, decode, chunked

    def _fail_batch(self, batch: ScheduledBatch, error: str) -> list[RequestOutput]:
        outs = []
        for seq, _ in batch.items:
            if seq in self.scheduler.running:
                self.scheduler.running.remove(seq)
            self.block_manager.free(seq, forget_hashes=True)
            seq.finish("error", f"engine step failed: {error}")
            outs.append(self._output(seq, [], True))
        return outs

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
        prefill, decode, chunked = counts
        if batch.items:
            self.num_steps += 1
        self.num_chunked_prefills += chunked
        self.num_prefill_tokens += prefill
        self.num_decode_tokens += decode
        self.prefix_cache_queries += batch.prefix_queries
        self.prefix_cache_hits += batch.prefix_hits
        self.num_preemptions += len(batch.preempted)
        bm = self.block_manager
        self.last_step = StepStats(
            step=self.num_steps,
            start_time=start,
            duration=time.monotonic() - start,
            policy=self.scheduler.policy,
            num_seqs=len(batch.items),
            num_prefill_tokens=prefill,
            num_decode_tokens=decode,
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
            num_blocks_free=bm.num_free,
            num_blocks_used=bm.num_used,
            num_blocks_cached=bm.num_cached,
            prefix_cache_queries=batch.prefix_queries,
            prefix_cache_hits=batch.prefix_hits,
            num_preemptions=len(batch.preempted),
            preempted_request_ids=tuple(s.request_id for s in batch.preempted),
            finished_request_ids=tuple(o.request_id for o in outputs if o.finished),
            error=error,
            block_map=self.block_map() if self.collect_block_map else None,
        )
        self._last_end = time.monotonic()

    # -- stats ---------------------------------------------------------------------------------
    def stats(self) -> EngineStats:
        bm = self.block_manager
        return EngineStats(
            num_blocks_total=bm.num_blocks,
            num_blocks_used=bm.num_used,
            num_blocks_cached=bm.num_cached,
            num_blocks_free=bm.num_free,
            block_size=bm.block_size,
            prefix_cache_queries=self.prefix_cache_queries,
            prefix_cache_hits=self.prefix_cache_hits,
            num_preemptions=self.num_preemptions,
            num_steps=self.num_steps,
            num_prefill_tokens=self.num_prefill_tokens,
            num_decode_tokens=self.num_decode_tokens,
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
            num_chunked_prefills=self.num_chunked_prefills,
            tensor_parallel_size=self.config.tensor_parallel_size,
            rank_memory_bytes=tuple(self.rank_memory_bytes()),
        )

    def block_map(self) -> BlockMap:
        """Every block's state and first owning request, for the dashboard's heat map."""
        bm = self.block_manager
        states = bytearray(FREE for _ in range(bm.num_blocks))
        owners: list[str | None] = [None] * bm.num_blocks
        for block_id in bm.cached_lru:
            states[block_id] = CACHED
        for seq in self.scheduler.running:
            for block_id in seq.block_table:
                if owners[block_id] is None:
                    owners[block_id] = seq.request_id
                states[block_id] = SHARED if bm.blocks[block_id].ref_count > 1 else USED
        return BlockMap(bytes(states), tuple(owners))

    def set_scheduling_policy(self, policy: str) -> None:
        self.scheduler.set_policy(policy)
        self.config.scheduling_policy = policy
