"""The fused Triton sampler vs its torch reference on CPU through the Triton interpreter, at tiny shapes."""

from __future__ import annotations

import math
import os

# The interpreter is chosen when kernels are decorated, so this must precede any Triton import.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

pytest.importorskip("triton", reason="Triton is not installed; the fused sampler cannot be tested")

from nanovllm_tui.kernels.sample_ref import sample_reference
from nanovllm_tui.kernels.triton_sample import NOISE_TILE, sample

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("these tests run Triton kernels on CPU tensors and need TRITON_INTERPRET=1", allow_module_level=True)

VOCAB = 2 * NOISE_TILE + 300  # three tiles, the last one partial
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def rows_seeds(batch: int, base: int = 11) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct seeds and offsets, some negative or above 2^32 (both are full 64-bit values)."""
    seeds = torch.arange(batch, dtype=torch.int64) * 1_000_003 + base
    seeds[::3] = -seeds[::3]
    offsets = torch.arange(batch, dtype=torch.int64) * (1 << 33) + 5
    return seeds, offsets


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_splits", [1, 2, 3])
def test_greedy_equals_torch_argmax_including_ties(dtype: torch.dtype, num_splits: int, gen) -> None:
    # Integer logits in a small range: every row has many tied maxima, spread over tiles and quarters.
    logits = torch.randint(-4, 3, (4, VOCAB), generator=gen).to(dtype)
    logits[1, :] = 0  # all tied: token 0
    logits[2, VOCAB - 1] = 7  # the maximum in the partial last tile
    logits[3, NOISE_TILE // 4 + 1] = 7  # equal maxima in quarter 1 of tile 0 and in tile 2: lowest wins
    logits[3, 2 * NOISE_TILE + 5] = 7
    tokens = sample(logits, torch.zeros(4), noise="off", num_splits=num_splits)  # T = 0 draws no noise
    assert tokens.dtype == torch.int64
    assert torch.equal(tokens, logits.argmax(dim=-1))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's inf * 0
@pytest.mark.parametrize("temperature", [0.0, 0.7])
@pytest.mark.parametrize("num_splits", [1, 3])
def test_non_finite_rows_return_minus_one(temperature: float, num_splits: int, gen) -> None:
    logits = torch.randn(6, VOCAB, generator=gen, dtype=torch.bfloat16)
    logits[0, 0] = float("nan")
    logits[1, VOCAB - 1] = float("inf")
    logits[2, NOISE_TILE + 3] = float("-inf")  # -inf also fails the check, as torch.isfinite does
    logits[3, :] = float("-inf")
    logits[4, 2 * NOISE_TILE] = float("nan")
    seeds, offsets = rows_seeds(6)
    tokens = sample(logits, torch.full((6,), temperature), seeds, offsets, num_splits=num_splits)
    assert tokens[:5].tolist() == [-1] * 5
    assert 0 <= int(tokens[5]) < VOCAB  # the clean row is unaffected by its neighbours
    if temperature == 0:
        assert int(tokens[5]) == int(logits[5].argmax())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_splits", [1, 3])
def test_tokens_equal_reference_with_the_kernels_noise(dtype: torch.dtype, num_splits: int, gen) -> None:
    batch = 5
    logits = (3 * torch.randn(batch, VOCAB, generator=gen)).to(dtype)
    temps = torch.tensor([0.0, 0.6, 1.0, 2.0, 1e-3])
    seeds, offsets = rows_seeds(batch)
    noise = torch.zeros(batch, VOCAB)
    tokens = sample(logits, temps, seeds, offsets, num_splits=num_splits, noise_out=noise)
    assert torch.equal(noise[0], torch.zeros(VOCAB))  # greedy rows draw no noise
    assert bool(noise[1:].isfinite().all()) and noise[1:].std() > 1.0
    assert torch.equal(tokens, sample_reference(logits, temps, noise))


def test_noise_off_is_argmax_of_logits_over_temperature(gen) -> None:
    logits = torch.randn(4, VOCAB, generator=gen)
    temps = torch.tensor([0.5, 0.0, 1.3, 7.0])
    tokens = sample(logits, temps, noise="off", num_splits=2)
    assert torch.equal(tokens, sample_reference(logits, temps))
    assert torch.equal(tokens, (logits / torch.where(temps > 0, temps, 1.0)[:, None]).argmax(dim=-1))


def test_seeds_reproduce_and_differ(gen) -> None:
    batch = 8
    logits = torch.randn(batch, VOCAB, generator=gen)
    temps = torch.full((batch,), 5.0)  # hot: tokens are nearly uniform, so distinct noise shows in them
    seeds, offsets = rows_seeds(batch)
    runs = []
    for s, o in [(seeds, offsets), (seeds, offsets), (seeds + 1, offsets), (seeds, offsets + 1)]:
        noise = torch.zeros(batch, VOCAB)
        runs.append((sample(logits, temps, s, o, noise_out=noise), noise))
    (t0, n0), (t1, n1), (t_seed, n_seed), (t_off, n_off) = runs
    assert torch.equal(t0, t1) and torch.equal(n0, n1)
    for tokens, noise in [(t_seed, n_seed), (t_off, n_off)]:
        assert (noise != n0).float().mean() > 0.99  # a new seed or offset gives fresh noise everywhere
        assert (tokens != t0).sum() >= batch // 2


def test_seeded_row_is_batch_independent(gen) -> None:
    row = torch.randn(VOCAB, generator=gen)
    seed, offset = torch.tensor([-77], dtype=torch.int64), torch.tensor([12], dtype=torch.int64)
    alone = torch.zeros(1, VOCAB)
    token = sample(row[None], torch.tensor([0.9]), seed, offset, noise_out=alone)
    # The same (seed, offset) as row 2 of a batch with other rows, split differently.
    logits = torch.randn(4, VOCAB, generator=gen)
    logits[2] = row
    seeds, offsets = rows_seeds(4)
    seeds[2], offsets[2] = seed, offset
    for num_splits in (1, 3):
        noise = torch.zeros(4, VOCAB)
        tokens = sample(
            logits, torch.tensor([0.0, 1.2, 0.9, 0.3]), seeds, offsets, num_splits=num_splits, noise_out=noise
        )
        assert int(tokens[2]) == int(token[0])
        assert torch.equal(noise[2], alone[0])


def test_noise_is_standard_gumbel() -> None:
    vocab = 8 * NOISE_TILE
    noise = torch.zeros(1, vocab)
    seeds, offsets = rows_seeds(1)
    sample(torch.zeros(1, vocab), torch.ones(1), seeds, offsets, noise_out=noise)
    g = noise[0].double().sort().values
    n = g.numel()
    cdf = torch.exp(-torch.exp(-g))
    ks = torch.maximum(torch.arange(1, n + 1) / n - cdf, cdf - torch.arange(n) / n).max()
    assert ks < 1.95 / math.sqrt(n)  # Kolmogorov-Smirnov at p = 0.001
    assert g.unique().numel() > 0.99 * n  # no tile or quarter repeats another's noise
    assert abs(float(g.mean()) - 0.5772) < 0.05  # Euler's gamma
    assert abs(float(g.var()) - math.pi**2 / 6) < 0.15


def test_sampled_frequencies_match_softmax() -> None:
    # One seeded request stepping through 240 positions: its draws must follow softmax(logits / T).
    draws, temperature = 240, 0.5
    logits = torch.tensor([1.5, 0.75, 0.0, -0.75, -1.5])
    seeds = torch.full((draws,), 1234, dtype=torch.int64)
    offsets = torch.arange(draws, dtype=torch.int64)
    tokens = sample(logits.expand(draws, -1).contiguous(), torch.full((draws,), temperature), seeds, offsets)
    counts = torch.bincount(tokens, minlength=5).double()
    probs = torch.softmax(logits.double() / temperature, dim=0)
    # The last three tokens share one bin, so that every bin expects >= 5 draws.
    counts = torch.cat([counts[:2], counts[2:].sum(0, keepdim=True)])
    expected = draws * torch.cat([probs[:2], probs[2:].sum(0, keepdim=True)])
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 13.8  # chi-square, 2 degrees of freedom, p = 0.001 (T = 1 or no noise scores > 40)


def test_bad_arguments_raise_clear_errors() -> None:
    logits = torch.zeros(2, 10)
    with pytest.raises(ValueError, match="seeds are required"):
        sample(logits, torch.ones(2))
    with pytest.raises(ValueError, match="temperatures must be"):
        sample(logits, torch.ones(3), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="unit stride"):
        sample(logits.t(), torch.ones(10), torch.zeros(10, dtype=torch.int64))
    with pytest.raises(ValueError, match="noise="):
        sample(logits, torch.ones(2), noise="gauss")
    assert sample(torch.zeros(0, 10), torch.zeros(0), noise="off").shape == (0,)


@pytest.mark.parametrize("num_splits", [1, 3])
def test_tiny_temperatures_are_greedy(num_splits: int, gen) -> None:
    """Below MIN_TEMPERATURE a row is greedy: 1/T would overflow float32 (T < 3e-39) and scale logits to inf."""
    logits = 100 * torch.randn(5, VOCAB, generator=gen)
    temps = torch.tensor([1e-40, 1e-38, 1e-30, 5e-6, 0.0])
    seeds, offsets = rows_seeds(5)
    tokens = sample(logits, temps, seeds, offsets, num_splits=num_splits)
    assert torch.equal(tokens, logits.argmax(dim=-1))
    assert torch.equal(tokens, sample_reference(logits, temps))


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the interpreter's x * (1/T)
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # and its inf * 0
@pytest.mark.parametrize("num_splits", [1, 3])
def test_scores_that_overflow_are_flagged_like_non_finite_logits(num_splits: int, gen) -> None:
    """The check is on what is sampled from: finite logits whose logits / T overflow float32 give -1, not a
    token picked among infinities."""
    logits = torch.randn(3, VOCAB, generator=gen)
    logits[0, 17] = 1e36  # * 1/T = 1e5 overflows float32
    logits[1, 17] = 1e36  # the same logit in a greedy row is fine: it is the argmax
    temps = torch.tensor([1e-5, 0.0, 1e-5])
    seeds, offsets = rows_seeds(3)
    noise = torch.zeros(3, VOCAB)
    tokens = sample(logits, temps, seeds, offsets, num_splits=num_splits, noise_out=noise)
    assert tokens.tolist()[:2] == [-1, 17]
    assert 0 <= int(tokens[2]) < VOCAB
    assert torch.equal(tokens, sample_reference(logits, temps, noise))
