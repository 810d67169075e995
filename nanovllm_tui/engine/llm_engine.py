"""LLMEngine: requests in, one scheduled forward per step(), RequestOutput deltas and stats out.

This file builds the engine from a model directory and holds the request API (validate, add, abort) and the
totals; the step loop is EngineCore (engine_core.py). The engine is single-threaded and knows nothing of
streaming or UIs; engine/serving wraps it.

progress: an optional callback progress(phase, done, total, unit) that hears the start-up phases, "load"
(checkpoint bytes read) and, on CUDA, "cuda graphs" (graphs captured); done == total ends a phase. It is never
called once the engine is built (the CLIs draw it with bench.phases.PhasePrinter).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from nanovllm_tui.engine.config import Config
from nanovllm_tui.engine.engine_core import EngineCore
from nanovllm_tui.engine.execution.loader import load_hf_config
from nanovllm_tui.engine.execution.model_runner import ModelRunner
from nanovllm_tui.engine.model_dir import check_hf_config
from nanovllm_tui.engine.request_check import (
    check_params_for_model,
    check_request,
    check_request_id,
    tokenize_prompt,
)
from nanovllm_tui.engine.sampling_params import SamplingParams
from nanovllm_tui.engine.scheduling.sequence import Sequence
from nanovllm_tui.engine.stats import EngineStats
from nanovllm_tui.engine.text.detokenizer import IncrementalDetokenizer
from nanovllm_tui.engine.text.tokenizer import eos_token_ids, load_tokenizer

# (phase, done, total, unit): the start-up phases, as engine/demo_model.Progress reports them too.
ProgressFn = Callable[[str, int, int, str], None]


class LLMEngine(EngineCore):
    def __init__(self, model: str, *, progress: ProgressFn | None = None, **kwargs: Any) -> None:
        self._progress = progress  # read by _make_runner only (its signature is a test seam)
        config = Config.from_kwargs(model, **kwargs)
        config.hf_config = load_hf_config(config.model)
        check_hf_config(config.hf_config, os.path.join(config.model, "config.json"))
        max_pos = getattr(config.hf_config, "max_position_embeddings", None)
        if max_pos:
            config.max_model_len = min(config.max_model_len, max_pos)
        self.tokenizer = load_tokenizer(config.model)
        config.eos_token_ids = eos_token_ids(config.model, config.hf_config, self.tokenizer)
        runner = self._make_runner(config)
        if config.async_scheduling is None:
            config.async_scheduling = runner.device.type == "cuda"
        super().__init__(config, runner)

    def _make_runner(self, config: Config) -> Any:
        """The model runner (a seam: tests inject fakes here)."""
        if config.tensor_parallel_size > 1:  # rank 0 runs here; ranks 1..N-1 are worker processes
            from nanovllm_tui.engine.tp.runner import TPModelRunner

            return TPModelRunner(config, self._progress)
        return ModelRunner(config, self._progress)

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
        return tokenize_prompt(prompt, self.config, self.tokenizer)

    def validate_request(self, prompt: str | list[int], sampling_params: SamplingParams | None = None) -> list[int]:
        """Tokenize and check a request without queueing it; reads only config and tokenizer, so any thread may call it."""
        return check_request(prompt, sampling_params, self.config, self.tokenizer)

    def add_request(
        self,
        prompt: str | list[int],
        sampling_params: SamplingParams | None = None,
        request_id: str | None = None,
        detokenize: bool = True,
        stream: bool = True,
    ) -> Sequence:
        """Validate and queue a request; raises ValueError naming the bad value and the limit.

        request_id: unique among live requests (ValueError if not); None draws one that no live request holds.
        stream: step() returns an output for this request every step it gets tokens (its deltas); False: only
        the final output, which then carries every completion token and the whole text (batch callers).
        """
        sp = check_params_for_model(sampling_params, self.config)
        ids = self.validate_request(prompt, sp)
        if request_id is not None:
            check_request_id(request_id, self.requests)
        seq = Sequence(ids, sp, request_id, self.config.eos_token_ids, self.config.max_model_len)
        suffix = 0
        while seq.request_id in self.requests:  # a generated id that a caller took: generated ids yield
            suffix += 1
            seq.request_id = f"{seq.seq_id}.{suffix}"
        seq.stream = stream
        self.requests[seq.request_id] = seq
        if detokenize:
            self.detokenizers[seq.request_id] = IncrementalDetokenizer(self.tokenizer, sp.stop_strings)
        capacity = self.block_manager.num_blocks * self.block_manager.block_size
        if len(ids) + sp.max_tokens > capacity:
            self._finish(
                seq,
                "error",
                f"request needs up to {len(ids) + sp.max_tokens} tokens of KV cache but the "
                f"whole cache holds {capacity}; raise num_kvcache_blocks / kv_cache_memory",
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

    # -- stats ---------------------------------------------------------------------------------
    def stats(self) -> EngineStats:
        """Totals since the engine started, and the pool and queues now."""
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

    def set_scheduling_policy(self, policy: str) -> None:
        """Switch the scheduling policy for the steps to come."""
        self.scheduler.set_policy(policy)
        self.config.scheduling_policy = policy
