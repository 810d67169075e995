"""Repetition / presence / frequency penalties and min_p: hand-computed logits, validation, the real engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from nanovllm_tui.engine import LLM, SamplingParams
from nanovllm_tui.layers.penalties import apply_min_p, apply_penalties, build_penalties
from nanovllm_tui.layers.sampler import Sampler


@dataclass
class _Seq:
    token_ids: list[int]
    num_prompt_tokens: int
    sampling_params: SamplingParams = field(default_factory=SamplingParams)


def _penalize(prompt: list[int], output: list[int], logits: list[float], **kw: Any) -> list[float]:
    seq = _Seq(prompt + output, len(prompt), SamplingParams(**kw))
    p = build_penalties([seq], len(logits), torch.device("cpu"))
    return apply_penalties(torch.tensor([logits]), p)[0].tolist()


def test_repetition_divides_positive_and_multiplies_negative_seen_logits():
    # Token 0 in the prompt, token 1 in the output, tokens 2 and 3 unseen.
    out = _penalize([0], [1], [2.0, -1.0, 3.0, -2.0], repetition_penalty=2.0)
    assert out == [1.0, -2.0, 3.0, -2.0]


def test_presence_and_frequency_apply_to_output_tokens_only():
    # Token 0 only in the prompt; token 1 twice and token 2 once in the output.
    out = _penalize([0], [1, 2, 1], [1.0, 1.0, 1.0, 1.0], presence_penalty=0.5, frequency_penalty=0.25)
    assert out == [1.0, 1.0 - 0.5 - 0.5, 1.0 - 0.5 - 0.25, 1.0]


def test_min_p_masks_exactly_below_the_threshold():
    probs = torch.tensor([[0.5, 0.25, 0.15, 0.1]])
    out = apply_min_p(probs.log(), torch.tensor([0.3]))  # threshold 0.15: 0.15 stays, 0.1 goes
    assert torch.isfinite(out).tolist() == [[True, True, True, False]]
    assert torch.isfinite(apply_min_p(probs.log(), torch.tensor([0.0]))).all()


def test_greedy_rows_use_penalized_logits():
    seq = _Seq([0], 1, SamplingParams(temperature=0, repetition_penalty=4.0))
    p = build_penalties([seq], 3, torch.device("cpu"))
    tokens = Sampler()(torch.tensor([[3.0, 1.0, 0.5]]), torch.zeros(1), None, None, penalties=p)
    assert tokens.tolist() == [1]  # 3 / 4 = 0.75 < 1


@pytest.mark.parametrize(
    "kw",
    [
        {"repetition_penalty": 0.0},
        {"repetition_penalty": -1.0},
        {"presence_penalty": 2.5},
        {"frequency_penalty": -2.1},
        {"min_p": 1.5},
        {"min_p": -0.1},
        {"repetition_penalty": float("nan")},
        {"presence_penalty": True},
    ],
)
def test_validation_names_the_field(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        SamplingParams(**kw)


def test_defaults_are_off():
    assert not SamplingParams().penalized
    assert SamplingParams(min_p=0.1).penalized


@pytest.fixture(scope="module")
def demo(demo_model_dir):
    return LLM(str(demo_model_dir), kvcache_block_size=16, max_model_len=256, num_kvcache_blocks=64)


PROMPT = "The list of numbers: one, two, three, one, two, three, one, two,"


def _ids(llm: LLM, prompts: list[str], sps: list[SamplingParams]) -> list[list[int]]:
    return [o["token_ids"] for o in llm.generate(prompts, sps, use_tqdm=False)]


def test_greedy_repetition_penalty_breaks_the_loop(demo):
    plain = _ids(demo, [PROMPT], [SamplingParams(temperature=0, max_tokens=24)])[0]
    pen = _ids(demo, [PROMPT], [SamplingParams(temperature=0, max_tokens=24, repetition_penalty=1.5)])[0]
    assert plain != pen
    # Greedy without a penalty repeats tokens; with a strong one, a token already seen scores lower.
    assert len(set(plain)) < len(plain)
    assert len(set(pen)) > len(set(plain))


def test_seeded_penalized_sampling_reproduces_and_plain_rows_are_untouched(demo):
    pen = SamplingParams(temperature=0.8, max_tokens=16, seed=7, repetition_penalty=1.3, frequency_penalty=0.5)
    plain = SamplingParams(temperature=0, max_tokens=16)
    seeded_plain = SamplingParams(temperature=0.9, top_p=0.9, max_tokens=16, seed=11)
    other = "What is the capital of France?"
    alone_pen = _ids(demo, [PROMPT], [pen])[0]
    assert _ids(demo, [PROMPT], [pen])[0] == alone_pen
    alone_plain, alone_seeded = _ids(demo, [other, other], [plain, seeded_plain])
    mixed = _ids(demo, [other, PROMPT, other], [plain, pen, seeded_plain])
    assert mixed == [alone_plain, alone_pen, alone_seeded]
