"""Shared helpers for engine tests: the transformers oracle and the end-of-run invariant check."""

from __future__ import annotations

import random

import torch

from nanovllm_tui.engine import LLM


def mixed_prompts(seed: int = 0, vocab: int = 4000) -> list[list[int]]:
    """≥ 8 prompts of mixed lengths, with a shared prefix and a duplicate so the prefix cache is exercised."""
    rng = random.Random(seed)
    shared = [rng.randrange(100, vocab) for _ in range(40)]
    prompts = [[rng.randrange(100, vocab) for _ in range(n)] for n in (1, 5, 15, 16, 17, 33, 48)]
    prompts += [shared + [rng.randrange(100, vocab) for _ in range(k)] for k in (3, 9, 20)]
    prompts.append(list(prompts[-1]))
    return prompts


def hf_greedy(model_dir, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """transformers' greedy generate, fp32, one prompt at a time (no padding effects)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.eval()
    outs = []
    with torch.inference_mode():
        for p in prompts:
            ids = torch.tensor([p])
            gen = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=model.generation_config.eos_token_id,
            )
            outs.append(gen[0, len(p) :].tolist())
    return outs


def check_clean(llm: LLM) -> None:
    """After every request finished: no used blocks, all ref counts 0, every hash entry valid."""
    bm = llm.block_manager
    bm.check_invariants([])
    assert bm.num_used == 0
    assert all(b.ref_count == 0 for b in bm.blocks)
    assert not llm.scheduler.running and not llm.scheduler.waiting
