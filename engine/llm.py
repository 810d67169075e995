"""LLM: the offline batch API over LLMEngine (nano-vllm / vLLM compatible)."""
from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm

from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams


class LLM(LLMEngine):
    def generate(self, prompts: list[str] | list[list[int]], sampling_params: SamplingParams | list[SamplingParams] | None = None,
                 use_tqdm: bool = True) -> list[dict[str, Any]]:
        """Run every prompt to completion; results in prompt order as {"text", "token_ids", "finish_reason", ...}."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        if sampling_params is None or isinstance(sampling_params, SamplingParams):
            sampling_params = [sampling_params or SamplingParams()] * len(prompts)
        if len(sampling_params) != len(prompts):
            raise ValueError(f"got {len(sampling_params)} sampling_params for {len(prompts)} prompts; pass one or one per prompt")
        seqs = []
        try:
            for p, sp in zip(prompts, sampling_params):
                seqs.append(self.add_request(p, sp, detokenize=bool(sp.stop)))
        except Exception:
            for seq in seqs:  # one bad prompt rejects the call, leaving nothing queued
                self.abort_request(seq.request_id)
            self._pending.clear()
            raise
        results: dict[str, dict[str, Any]] = {}
        bar = tqdm(total=len(seqs), desc="Generating", disable=not use_tqdm, dynamic_ncols=True)
        pieces: dict[str, list[str]] = {}
        while self.has_unfinished_requests():
            for out in self.step():
                pieces.setdefault(out.request_id, []).append(out.text)
                if out.finished:
                    results[out.request_id] = {"finish_reason": out.finish_reason, "error": out.error}
                    bar.update(1)
        bar.close()
        outputs = []
        for seq in seqs:
            ids = seq.completion_token_ids
            text = "".join(pieces.get(seq.request_id, [])) if seq.sampling_params.stop else \
                self.tokenizer.decode(ids, skip_special_tokens=True)
            outputs.append({"text": text, "token_ids": ids, **results[seq.request_id]})
        return outputs
