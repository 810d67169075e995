"""The fused sampler (nanovllm_tui/kernels/triton_sample.py) on CUDA at Qwen3's vocabulary: greedy ties,
non-finite rows, the reference's noise, seeds, frequencies, the Gumbel tail, and CUDA-graph replay."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)
pytest.importorskip("triton", reason="Triton is not installed")

from nanovllm_tui.kernels.sample_ref import inverse_temperatures, sample_reference  # noqa: E402
from nanovllm_tui.kernels.triton_sample import choose_num_splits, sample  # noqa: E402
from nanovllm_tui.layers.sampler import Sampler  # noqa: E402

DEVICE = torch.device("cuda")
VOCAB = 151936


def philox_rows(batch: int, base: int = 0, offset: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed seeds (some negative) and offsets: every run draws the same noise, so these tests cannot flake."""
    seeds = torch.arange(batch, dtype=torch.int64, device=DEVICE) * 7919 + base
    seeds[::2] = -seeds[::2] - 1
    return seeds, torch.full((batch,), offset, dtype=torch.int64, device=DEVICE)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("batch", [1, 256])
def test_sample_greedy_equals_argmax_with_ties(dtype: torch.dtype, batch: int) -> None:
    tied = torch.randint(-50, 50, (batch, VOCAB), device=DEVICE).to(dtype)  # ~1,500 tied maxima per row
    smooth = torch.randn(batch, VOCAB, device=DEVICE).to(dtype)
    temps = torch.zeros(batch, device=DEVICE)
    for logits in (tied, smooth):
        for num_splits in (None, 1, 7):
            assert torch.equal(sample(logits, temps, noise="off", num_splits=num_splits), logits.argmax(dim=-1))


@pytest.mark.parametrize("temperature", [0.0, 0.6])
def test_sample_non_finite_rows(temperature: float) -> None:
    batch = 256
    logits = torch.randn(batch, VOCAB, device=DEVICE).to(torch.bfloat16)
    bad = {0: (0, "nan"), 1: (VOCAB - 1, "inf"), 2: (VOCAB // 2, "-inf"), 3: (77_777, "nan"), 200: (1024, "inf")}
    for row, (col, value) in bad.items():
        logits[row, col] = float(value)
    temps = torch.full((batch,), temperature, device=DEVICE)
    seeds, offsets = philox_rows(batch)
    for num_splits in (None, 1):
        tokens = sample(logits, temps, seeds, offsets, num_splits=num_splits)
        flagged = torch.zeros(batch, dtype=torch.bool, device=DEVICE)
        flagged[list(bad)] = True
        assert bool((tokens[flagged] == -1).all()) and bool((tokens[~flagged] >= 0).all())
        if temperature == 0:
            assert torch.equal(tokens[~flagged], logits[~flagged].argmax(dim=-1))
    # The engine's entry point gives the same, and the torch path (top-k) flags the same rows.
    runner_like = Sampler()(logits, temps, None, None, seeds=seeds, offsets=offsets)
    assert torch.equal(runner_like, sample(logits, temps, seeds, offsets))
    top_k = Sampler()(logits, temps, torch.full((batch,), 50, device=DEVICE), None, seeds=seeds, offsets=offsets)
    assert torch.equal(top_k == -1, flagged)


def test_sample_matches_reference_with_its_noise() -> None:
    batch = 256
    logits = (3 * torch.randn(batch, VOCAB, device=DEVICE)).to(torch.bfloat16)
    temps = torch.tensor([0.0, 0.6, 1.0, 1.5], device=DEVICE).repeat(batch // 4)
    seeds, offsets = philox_rows(batch)
    noise = torch.zeros(batch, VOCAB, device=DEVICE)
    tokens = sample(logits, temps, seeds, offsets, noise_out=noise)
    ref = sample_reference(logits, temps, noise)
    # The kernel may fuse x * (1/T) + g into one FMA (one rounding, not two): allow exact near-ties only.
    x = logits.float()
    scores = torch.where((temps > 0)[:, None], x * inverse_temperatures(temps)[:, None] + noise, x)
    best = scores.max(dim=-1).values
    picked = scores.gather(1, tokens[:, None]).squeeze(1)
    assert bool((picked >= best - 1e-5 * best.abs().clamp(min=1)).all())
    assert (tokens == ref).float().mean() >= 0.99
    assert torch.equal(tokens[temps == 0], x[temps == 0].argmax(dim=-1))


def test_sample_seeds_reproduce_differ_and_are_batch_independent() -> None:
    batch = 256
    logits = torch.randn(batch, VOCAB, device=DEVICE).to(torch.bfloat16)  # flat: tokens follow the noise
    temps = torch.full((batch,), 0.6, device=DEVICE)
    seeds, offsets = philox_rows(batch)
    tokens = sample(logits, temps, seeds, offsets)
    assert torch.equal(tokens, sample(logits, temps, seeds, offsets))
    assert (sample(logits, temps, seeds + 1, offsets) != tokens).float().mean() > 0.9
    assert (sample(logits, temps, seeds, offsets + 1) != tokens).float().mean() > 0.9
    # Row 37 alone (a batch of 1 splits the vocabulary over many more programs) gets the same token.
    assert choose_num_splits(1, VOCAB, 132) != choose_num_splits(batch, VOCAB, 132)
    alone = sample(logits[37:38], temps[37:38], seeds[37:38], offsets[37:38])
    assert int(alone[0]) == int(tokens[37])
    shuffled = torch.randperm(batch, device=DEVICE)
    assert torch.equal(sample(logits[shuffled], temps[shuffled], seeds[shuffled], offsets[shuffled]), tokens[shuffled])


def test_sample_frequencies_match_softmax() -> None:
    batch, launches, temperature = 256, 200, 0.6
    row = 0.5 * torch.randn(VOCAB, device=DEVICE) - 3.0  # background: ~40% of the mass over 151,928 tokens
    hot = torch.tensor([5, 1023, 1024, 40_000, 77_777, 100_001, 151_000, VOCAB - 1], device=DEVICE)
    row[hot] = torch.tensor([4.0, 3.5, 3.0, 2.5, 2.0, 1.0, 0.0, -1.0], device=DEVICE)
    logits = row.to(torch.bfloat16).expand(batch, -1).contiguous()
    probs = torch.softmax(logits[0].double() / temperature, dim=0)
    temps = torch.full((batch,), temperature, device=DEVICE)
    counts = torch.zeros(VOCAB, dtype=torch.float64, device=DEVICE)
    for launch in range(launches):
        seeds, offsets = philox_rows(batch, base=launch * 1_000_003, offset=launch)
        counts += torch.bincount(sample(logits, temps, seeds, offsets), minlength=VOCAB).double()
    draws = batch * launches
    # Bins: each hot token expecting >= 20 draws, plus everything else together.
    keep = hot[probs[hot] * draws >= 20]
    other = torch.ones(VOCAB, dtype=torch.bool, device=DEVICE)
    other[keep] = False
    observed = torch.cat([counts[keep], counts[other].sum(0, keepdim=True)])
    expected = draws * torch.cat([probs[keep], probs[other].sum(0, keepdim=True)])
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    df = observed.numel() - 1
    assert chi2 < df + 6 * (2 * df) ** 0.5  # about p = 1e-4


def test_sample_noise_is_gumbel_into_the_tail() -> None:
    batch = 256
    noise = torch.zeros(batch, VOCAB, device=DEVICE)
    seeds, offsets = philox_rows(batch)
    sample(
        torch.zeros(batch, VOCAB, device=DEVICE, dtype=torch.bfloat16),
        torch.ones(batch, device=DEVICE),
        seeds,
        offsets,
        noise_out=noise,
    )
    n = noise.numel()
    assert bool(noise.isfinite().all())
    assert abs(float(noise.double().mean()) - 0.5772157) < 1e-3
    # The top tail comes from u near 1, where a sloppy log would lose it: compare counts with exp(-exp(-g)).
    for g in (4.0, 10.0, 13.0):
        p = 1 - torch.exp(-torch.exp(torch.tensor(-g, dtype=torch.float64)))
        expected = float(n * p)
        assert abs(int((noise > g).sum()) - expected) < 5 * expected**0.5 + 1, g


def test_sample_has_no_host_sync_and_replays_in_a_cuda_graph() -> None:
    batch = 64
    logits = torch.randn(batch, VOCAB, device=DEVICE).to(torch.bfloat16)
    temps = torch.full((batch,), 0.6, device=DEVICE)
    temps[::3] = 0
    seeds, offsets = philox_rows(batch)
    expected = sample(logits, temps, seeds, offsets)  # also compiles outside the checks below
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any device-to-host sync inside raises
    try:
        tokens = sample(logits, temps, seeds, offsets)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(tokens, expected)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = sample(logits, temps, seeds, offsets)
    for step in range(3):
        # New values in the same buffers, as the engine's staging copies do before each step.
        logits.copy_(torch.randn_like(logits, dtype=torch.float32))
        seeds.add_(step + 1)
        offsets.add_(1)
        graph.replay()
        assert torch.equal(out, sample(logits, temps, seeds, offsets))
