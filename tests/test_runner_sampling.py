"""ModelRunner.sample: greediness decided on the host, non-finite logits flagged with -1 on both sampling paths."""

from __future__ import annotations

import pytest
import torch

from nanovllm_tui.bench.random_model import make_random_model
from nanovllm_tui.engine.llm_engine import LLMEngine
from nanovllm_tui.engine.sampling_params import SamplingParams
from nanovllm_tui.engine.scheduling.sequence import Sequence
from nanovllm_tui.layers.sampler import Sampler

TINY = dict(
    num_hidden_layers=1,
    hidden_size=64,
    intermediate_size=64,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=32,
    vocab_size=300,
)


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    model_dir = make_random_model(tmp_path_factory.mktemp("tiny-runner"), **TINY)
    return LLMEngine(
        str(model_dir), device="cpu", kvcache_block_size=16, max_model_len=64, num_kvcache_blocks=8
    ).model_runner


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_non_finite_rows_are_flagged(runner, temperature: float) -> None:
    seqs = []
    for i in range(3):
        seq = Sequence([5 + i, 6, 7], SamplingParams(temperature=temperature, seed=i))
        seq.block_table = [i]
        seqs.append(seq)
    inputs = runner.prepare([(s, 3) for s in seqs])
    assert inputs.all_greedy == (temperature == 0)
    logits = torch.randn(3, TINY["vocab_size"])
    logits[1, 17] = float("nan")
    logits[2, 3] = float("inf")
    tokens = runner.sample(logits, inputs)
    assert tokens[1] == -1 and tokens[2] == -1
    assert 0 <= tokens[0] < TINY["vocab_size"]
    if temperature == 0:
        assert tokens[0] == int(logits[0].argmax())


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_sampler_with_seeds_flags_non_finite_rows_on_the_torch_path(temperature: float) -> None:
    # On CPU, passing seeds keeps the torch sampler and its generators, and adds the -1 flagging.
    logits = torch.randn(3, 50)
    logits[1, 7] = float("nan")
    temps = torch.full((3,), temperature)
    seeds = torch.arange(3, dtype=torch.int64)
    plain = Sampler()(logits, temps, None, None, _generators(3), all_greedy=temperature == 0)
    flagged = Sampler()(
        logits, temps, None, None, _generators(3), all_greedy=temperature == 0, seeds=seeds, offsets=seeds
    )
    assert flagged.tolist() == [int(plain[0]), -1, int(plain[2])]


def _generators(n: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(i) for i in range(n)]


def test_tiny_temperatures_are_greedy_on_the_torch_path() -> None:
    """logits / T overflows float32 for T below ~1e-37: such rows are greedy, not NaN probabilities."""
    gen = torch.Generator().manual_seed(0)
    logits = 50 * torch.randn(5, 300, generator=gen)
    temps = torch.tensor([1e-44, 1e-40, 1e-37, 5e-6, 0.0])
    seeds = torch.arange(5, dtype=torch.int64)
    for kwargs in ({}, {"seeds": seeds, "offsets": seeds}):
        tokens = Sampler()(logits, temps, None, None, _generators(5), all_greedy=False, **kwargs)
        assert tokens.tolist() == logits.argmax(dim=-1).tolist()


def test_torch_path_flags_scores_that_overflow() -> None:
    """The non-finite check looks at what is sampled from (logits / T), not only at the logits."""
    logits = torch.randn(3, 50)
    logits[0, 7] = 1e36  # / 1e-5 overflows float32
    logits[1, 7] = 1e36  # the same logit in a greedy row is its argmax
    temps = torch.tensor([1e-5, 0.0, 0.8])
    seeds = torch.arange(3, dtype=torch.int64)
    tokens = Sampler()(logits, temps, None, None, _generators(3), all_greedy=False, seeds=seeds, offsets=seeds)
    assert tokens.tolist()[:2] == [-1, 7]
    assert 0 <= int(tokens[2]) < 50


def test_unasked_all_greedy_rows_are_checked_in_full_like_the_kernel() -> None:
    """Without the caller's all_greedy, a greedy row with a -inf logit is flagged (as the fused kernel does);
    with all_greedy=True only the picked logit is checked (the runner's no-extra-pass promise)."""
    logits = torch.randn(2, 50)
    logits[0, 3] = float("-inf")
    temps = torch.zeros(2)
    seeds = torch.arange(2, dtype=torch.int64)
    unasked = Sampler()(logits, temps, None, None, seeds=seeds, offsets=seeds)
    told = Sampler()(logits, temps, None, None, all_greedy=True, seeds=seeds, offsets=seeds)
    assert unasked.tolist() == [-1, int(logits[1].argmax())]
    assert told.tolist() == logits.argmax(dim=-1).tolist()
