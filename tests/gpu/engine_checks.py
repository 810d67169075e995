"""Engine-level checks shared by the GPU tests: free-running greedy generation and teacher-forced argmax agreement."""

from __future__ import annotations

import random

import torch

from nanovllm_tui.engine.llm_engine import LLMEngine
from nanovllm_tui.engine.sampling_params import SamplingParams
from nanovllm_tui.engine.scheduling.sequence import Sequence


def random_prompts(num: int, vocab: int, seed: int, lengths: tuple[int, int] = (1, 200)) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(vocab) for _ in range(rng.randint(*lengths))] for _ in range(num)]


def engine_greedy(engine: LLMEngine, prompts: list[list[int]], max_tokens: list[int] | int) -> list[list[int]]:
    """Greedy completions (EOS ignored, so every request runs to its max_tokens)."""
    limits = max_tokens if isinstance(max_tokens, list) else [max_tokens] * len(prompts)
    seqs = [
        engine.add_request(p, SamplingParams(temperature=0, max_tokens=m, ignore_eos=True), detokenize=False)
        for p, m in zip(prompts, limits)
    ]
    while engine.has_unfinished_requests():
        for out in engine.step():
            assert out.error is None, f"{out.error}\n{getattr(engine, 'last_traceback', '')}"
    return [s.completion_token_ids for s in seqs]


def hf_model(model_dir, dtype: torch.dtype, device: str = "cuda", attn_implementation: str = "sdpa"):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=dtype, attn_implementation=attn_implementation
    ).to(device)
    return model.eval()


@torch.inference_mode()
def hf_continuations(model, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """transformers' greedy continuation of each prompt (the forced tokens of the teacher-forced check)."""
    outs = []
    for p in prompts:
        ids = torch.tensor([p], device=model.device)
        gen = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
        )
        outs.append(gen[0, len(p) :].tolist())
    return outs


@torch.inference_mode()
def hf_argmax(model, sequences: list[list[int]], starts: list[int]) -> list[list[int]]:
    """transformers' argmax prediction at every position from starts[i]-1 on (one forward per sequence)."""
    preds = []
    for seq, start in zip(sequences, starts):
        logits = model(torch.tensor([seq], device=model.device)).logits[0]
        preds.append(logits[start - 1 :].argmax(-1).tolist())
    return preds


def engine_argmax(engine: LLMEngine, sequences: list[list[int]], starts: list[int]) -> list[list[int]]:
    """The engine's greedy prediction at the same positions, teacher-forced through its real prefill and decode steps.

    All sequences share one batch: a prefill of each prompt, then one decode step per forced token
    (CUDA-graph replays when graphs are on). Blocks are assigned directly, bypassing the scheduler.
    """
    runner = engine.model_runner
    bs = runner.block_size
    greedy = SamplingParams(temperature=0, max_tokens=1)
    seqs, next_block = [], 0
    for tokens, start in zip(sequences, starts):
        seq = Sequence(tokens[:start], greedy)
        need = -(-len(tokens) // bs)
        seq.block_table = list(range(next_block, next_block + need))
        next_block += need
        seqs.append(seq)
    if next_block > runner.num_kvcache_blocks:
        raise ValueError(
            f"teacher-forced check needs {next_block} KV blocks, the engine has {runner.num_kvcache_blocks}"
        )
    preds: list[list[int]] = [[] for _ in seqs]
    items = [(s, s.num_tokens) for s in seqs]
    while items:
        tokens = runner.run(items)
        still = []
        for (seq, n), tok, full, out in zip(items, tokens, sequences, preds):
            seq.num_computed_tokens += n
            out.append(tok)
            if seq.num_tokens < len(full):
                seq.token_ids.append(full[seq.num_tokens])  # force the reference token, not our prediction
                still.append((seq, 1))
        items = still
    return preds


def agreement(a: list[list[int]], b: list[list[int]]) -> float:
    pairs = [(x, y) for ra, rb in zip(a, b) for x, y in zip(ra, rb, strict=True)]
    return sum(x == y for x, y in pairs) / len(pairs)
