"""LLM: the offline batch API over LLMEngine (nano-vllm / vLLM compatible)."""

from __future__ import annotations

from collections.abc import Sequence as SequenceABC
from typing import Any

from tqdm.auto import tqdm

from nanovllm_tui.engine.llm_engine import LLMEngine
from nanovllm_tui.engine.outputs import RequestOutput
from nanovllm_tui.engine.sampling_params import SamplingParams
from nanovllm_tui.engine.scheduling.sequence import Sequence

Prompt = str | list[int]


class LLM(LLMEngine):
    def generate(
        self,
        prompts: Prompt | SequenceABC[Prompt],
        sampling_params: SamplingParams | SequenceABC[SamplingParams | None] | None = None,
        use_tqdm: bool = True,
    ) -> list[dict[str, Any]]:
        """Run every prompt to completion; results in prompt order as {"text", "token_ids", "finish_reason", ...}.

        prompts: one prompt (a string or a list of token ids) or a list of them. sampling_params: one for all,
        one per prompt (None entries take the defaults), or None for the defaults. Requests added with
        add_request run along; their outputs come from the next step() calls, none is lost.
        """
        prompt_list = _prompt_list(prompts)
        params = _params_list(sampling_params, len(prompt_list))
        seqs: list[Sequence] = []
        try:
            for p, sp in zip(prompt_list, params):
                seqs.append(self.add_request(p, sp, detokenize=bool(sp.stop), stream=False))
        except Exception:
            ours = {seq.request_id for seq in seqs}
            for seq in seqs:  # one bad prompt rejects the call, leaving nothing of it queued
                self.abort_request(seq.request_id)
            self._pending = [o for o in self._pending if o.request_id not in ours]
            raise
        ours = {seq.request_id for seq in seqs}
        results: dict[str, dict[str, Any]] = {}
        others: list[RequestOutput] = []  # outputs of requests this call did not add: handed back after
        bar = tqdm(total=len(seqs), desc="Generating", disable=not use_tqdm, dynamic_ncols=True)
        try:
            while len(results) < len(seqs):
                if not self.has_unfinished_requests():  # cannot happen: every request ends with an output
                    raise RuntimeError(f"the engine went idle with {len(seqs) - len(results)} requests unanswered")
                for out in self.step():  # ours are final outputs only (stream=False): one per request
                    if out.request_id not in ours:
                        others.append(out)
                        continue
                    results[out.request_id] = {"text": out.text, "finish_reason": out.finish_reason, "error": out.error}
                    bar.update(1)
        finally:
            bar.close()
            self._pending[:0] = others
        return [self._result(seq, results[seq.request_id]) for seq in seqs]

    def _result(self, seq: Sequence, result: dict[str, Any]) -> dict[str, Any]:
        ids = seq.completion_token_ids
        # With stop strings the detokenizer's text (cut at the stop) is the text; else decode once here.
        text = result.pop("text")
        if not seq.sampling_params.stop:
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return {"text": text, "token_ids": ids, **result}


def _prompt_list(prompts: Any) -> list[Any]:
    """prompts as a list of prompts (one prompt becomes a list of one); TypeError naming what is allowed."""
    if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
        return [prompts]
    if not isinstance(prompts, (list, tuple)):
        raise TypeError(
            f"prompts must be a string, a list of token ids, or a list of those; got {type(prompts).__name__}"
        )
    return list(prompts)


def _params_list(sampling_params: Any, n: int) -> list[SamplingParams]:
    """One SamplingParams per prompt (None = the defaults); TypeError / ValueError naming the argument."""
    if sampling_params is None or isinstance(sampling_params, SamplingParams):
        return [sampling_params or SamplingParams()] * n
    if not isinstance(sampling_params, (list, tuple)):
        raise TypeError(
            f"sampling_params must be a SamplingParams, a list of them, or None; got {type(sampling_params).__name__}"
        )
    if len(sampling_params) != n:
        raise ValueError(f"got {len(sampling_params)} sampling_params for {n} prompts; pass one or one per prompt")
    out = []
    for i, sp in enumerate(sampling_params):
        if sp is not None and not isinstance(sp, SamplingParams):
            raise TypeError(f"sampling_params[{i}] must be a SamplingParams or None, got {type(sp).__name__}")
        out.append(sp or SamplingParams())
    return out
