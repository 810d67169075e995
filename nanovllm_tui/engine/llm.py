"""LLM: the offline batch API over LLMEngine (nano-vllm / vLLM compatible)."""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm

from nanovllm_tui.engine.llm_engine import LLMEngine
from nanovllm_tui.engine.sampling_params import SamplingParams


class LLM(LLMEngine):
    def generate(
        self,
        prompts: list[str] | list[list[int]],
        sampling_params: SamplingParams | list[SamplingParams] | None = None,
        use_tqdm: bool = True,
    ) -> list[dict[str, Any]]:
        """Run every prompt to completion; results in prompt order as {"text", "token_ids", "finish_reason", ...}."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        if sampling_params is None or isinstance(sampling_params, SamplingParams):
            sampling_params = [sampling_params or SamplingParams()] * len(prompts)
        if len(sampling_params) != len(prompts):
            raise ValueError(
                f"got {len(sampling_params)} sampling_params for {len(prompts)} prompts; pass one or one per prompt"
            )
        seqs = []
        try:
            for p, sp in zip(prompts, sampling_params):
                seqs.append(self.add_request(p, sp, detokenize=bool(sp.stop), stream=False))
        except Exception:
            for seq in seqs:  # one bad prompt rejects the call, leaving nothing queued
                self.abort_request(seq.request_id)
            self._pending.clear()
            raise
        results: dict[str, dict[str, Any]] = {}
        bar = tqdm(total=len(seqs), desc="Generating", disable=not use_tqdm, dynamic_ncols=True)
        while self.has_unfinished_requests():
            for out in self.step():  # final outputs only (stream=False): one per request
                results[out.request_id] = {"text": out.text, "finish_reason": out.finish_reason, "error": out.error}
                bar.update(1)
        bar.close()
        outputs = []
        for seq in seqs:
            ids = seq.completion_token_ids
            result = results[seq.request_id]
            # With stop strings the detokenizer's text (cut at the stop) is the text; else decode once here.
            text = result.pop("text")
            if not seq.sampling_params.stop:
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
            outputs.append({"text": text, "token_ids": ids, **result})
        return outputs
