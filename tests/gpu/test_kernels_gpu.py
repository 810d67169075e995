"""Triton kernels vs the torch reference on CUDA at Qwen3-0.6B sizes, bf16 and fp32, plus CUDA-graph replay."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)
pytest.importorskip("triton", reason="Triton is not installed")

from nanovllm_tui.kernels import (
    qkv_ref,
    torch_ref,
)
from nanovllm_tui.kernels.sample_ref import inverse_temperatures, sample_reference  # noqa: E402
from nanovllm_tui.kernels.triton_decode import paged_decode_attention  # noqa: E402
from nanovllm_tui.kernels.triton_prefill import paged_prefill_attention  # noqa: E402
from nanovllm_tui.kernels.triton_qkv import qk_norm_rope_store  # noqa: E402
from nanovllm_tui.kernels.triton_sample import choose_num_splits, sample  # noqa: E402
from nanovllm_tui.kernels.triton_store_kv import store_kvcache  # noqa: E402
from nanovllm_tui.layers.sampler import Sampler  # noqa: E402

DEVICE = torch.device("cuda")
TOL = {torch.bfloat16: 1e-2, torch.float32: 1e-5}
NUM_HEADS, NUM_KV_HEADS = 16, 8  # Qwen3-0.6B


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Max abs error relative to the reference's max magnitude."""
    return float((out.double() - ref.double()).abs().max() / ref.double().abs().max().clamp(min=1e-12))


def paged_cache(context_lens: list[int], block_size: int, head_dim: int, dtype: torch.dtype, extra_cols: int = 1):
    """Random caches (fresh data every run) with shuffled block tables padded with -1."""
    need = [(c + block_size - 1) // block_size for c in context_lens]
    num_blocks = sum(need) + 2
    shape = (num_blocks, block_size, NUM_KV_HEADS, head_dim)
    k_cache = torch.randn(shape, dtype=dtype, device=DEVICE)
    v_cache = torch.randn(shape, dtype=dtype, device=DEVICE)
    perm = torch.randperm(num_blocks, device=DEVICE).to(torch.int32)
    tables = torch.full((len(context_lens), max(need) + extra_cols), -1, dtype=torch.int32, device=DEVICE)
    used = 0
    for b, n in enumerate(need):
        tables[b, :n] = perm[used : used + n]
        used += n
    return k_cache, v_cache, tables


def as_ref(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """float64 copies: the reference then measures only the kernel's own rounding."""
    return [t.double() for t in tensors]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("block_size", [16, 256])
def test_store_kvcache(dtype: torch.dtype, block_size: int) -> None:
    num_tokens, head_dim = 3000, 128
    qkv = torch.randn(num_tokens, NUM_HEADS + 2 * NUM_KV_HEADS, head_dim, dtype=dtype, device=DEVICE)
    key, value = qkv[:, NUM_HEADS : NUM_HEADS + NUM_KV_HEADS], qkv[:, NUM_HEADS + NUM_KV_HEADS :]
    num_blocks = (num_tokens + block_size - 1) // block_size + 4
    slots = torch.randperm(num_blocks * block_size, device=DEVICE)[:num_tokens]
    slots[torch.rand(num_tokens, device=DEVICE) < 0.1] = -1
    shape = (num_blocks, block_size, NUM_KV_HEADS, head_dim)
    k_cache, v_cache = torch.zeros(shape, dtype=dtype, device=DEVICE), torch.zeros(shape, dtype=dtype, device=DEVICE)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    torch_ref.store_kvcache(key, value, k_ref, v_ref, slots)
    store_kvcache(key, value, k_cache, v_cache, slots)
    assert torch.equal(k_cache, k_ref) and torch.equal(v_cache, v_ref)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("block_size", [16, 256])
@pytest.mark.parametrize("head_dim", [128, 64])
def test_prefill_mixed_batch(dtype: torch.dtype, block_size: int, head_dim: int) -> None:
    # (context_len, q_len): full prompt, prefix hit, decode row inside prefill, long context with a late chunk.
    seqs = [(1024, 1024), (700, 300), (513, 1), (2000, 77), (129, 129)]
    ctx = torch.tensor([c for c, _ in seqs], dtype=torch.int32, device=DEVICE)
    q_lens = torch.tensor([ql for _, ql in seqs], device=DEVICE)
    cu = torch.nn.functional.pad(q_lens.cumsum(0), (1, 0)).to(torch.int32)
    k_cache, v_cache, tables = paged_cache([c for c, _ in seqs], block_size, head_dim, dtype)
    q = torch.randn(int(cu[-1]), NUM_HEADS, head_dim, dtype=dtype, device=DEVICE)
    scale = head_dim**-0.5
    out = paged_prefill_attention(q, k_cache, v_cache, cu, ctx, tables, scale, max(ql for _, ql in seqs))
    ref = torch_ref.paged_prefill_attention(*as_ref(q, k_cache, v_cache), cu, ctx, tables, scale)
    assert out.dtype == dtype
    assert rel_err(out, ref) <= TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("block_size", [16, 256])
@pytest.mark.parametrize("head_dim", [128, 64])
@pytest.mark.parametrize("batch", [3, 48])
def test_decode_mixed_lengths(dtype: torch.dtype, block_size: int, head_dim: int, batch: int) -> None:
    lens = torch.randint(1, 5000, (batch,)).tolist()
    lens[0], lens[-1] = 1, 6000  # extremes: a single key next to a long context
    ctx = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    k_cache, v_cache, tables = paged_cache(lens, block_size, head_dim, dtype, extra_cols=3)
    q = torch.randn(batch, NUM_HEADS, head_dim, dtype=dtype, device=DEVICE)
    scale = head_dim**-0.5
    out = paged_decode_attention(q, k_cache, v_cache, ctx, tables, scale)
    ref = torch_ref.paged_decode_attention(*as_ref(q, k_cache, v_cache), ctx, tables, scale)
    assert out.dtype == dtype
    assert rel_err(out, ref) <= TOL[dtype]


@pytest.mark.parametrize("batch", [4, 64])
@pytest.mark.parametrize("block_size", [16, 256])
def test_decode_cuda_graph_replay_with_new_context_lens(batch: int, block_size: int) -> None:
    dtype, head_dim, capacity = torch.bfloat16, 128, 4096
    k_cache, v_cache, tables = paged_cache([capacity] * batch, block_size, head_dim, dtype)
    ctx = torch.full((batch,), 100, dtype=torch.int32, device=DEVICE)
    q = torch.randn(batch, NUM_HEADS, head_dim, dtype=dtype, device=DEVICE)
    scale = head_dim**-0.5
    paged_decode_attention(q, k_cache, v_cache, ctx, tables, scale)  # compile outside capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = paged_decode_attention(q, k_cache, v_cache, ctx, tables, scale)
    for _ in range(3):
        # New values in the same buffers, as the model runner does before each replay.
        ctx.copy_(torch.randint(0, capacity + 1, (batch,), device=DEVICE, dtype=torch.int32))
        ctx[0] = capacity
        q.copy_(torch.randn_like(q))
        graph.replay()
        torch.cuda.synchronize()
        live = ctx > 0  # context 0 rows are padding: zeros, not NaN
        assert torch.equal(out[~live], torch.zeros_like(out[~live]))
        ref = torch_ref.paged_decode_attention(*as_ref(q[live], k_cache, v_cache), ctx[live], tables[live], scale)
        assert rel_err(out[live], ref) <= TOL[dtype]


# -- fused attention input side (nanovllm_tui/kernels/triton_qkv.py) ------------------------------------------------------
def qkv_case(num_tokens: int, head_dim: int, dtype: torch.dtype, block_size: int = 16):
    """qkv rows with random norm weights, positions up to 4096, a cache of 0.5 and ~10 % padded (-1) slots."""
    width = (NUM_HEADS + 2 * NUM_KV_HEADS) * head_dim
    qkv = torch.randn(num_tokens, width + 64, dtype=dtype, device=DEVICE)[:, :width]  # strided rows
    positions = torch.randint(0, 4096, (num_tokens,), device=DEVICE)
    inv_freq = 1.0 / (1e6 ** (torch.arange(0, head_dim, 2, device=DEVICE).float() / head_dim))
    freqs = torch.outer(torch.arange(4096, device=DEVICE, dtype=torch.float32), inv_freq)
    emb = torch.cat((freqs, freqs), -1)
    num_blocks = num_tokens // block_size + 4
    slots = torch.randperm(num_blocks * block_size, device=DEVICE)[:num_tokens]
    slots[torch.rand(num_tokens, device=DEVICE) < 0.1] = -1
    cache = torch.full((num_blocks, block_size, NUM_KV_HEADS, head_dim), 0.5, dtype=dtype, device=DEVICE)
    weights = [1 + 0.1 * torch.randn(head_dim, dtype=dtype, device=DEVICE) for _ in range(2)]
    return qkv, positions, emb.cos(), emb.sin(), weights, slots, cache


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("head_dim", [128, 64])
@pytest.mark.parametrize("qk_norm", [True, False])
def test_qk_norm_rope_store_matches_unfused(dtype: torch.dtype, head_dim: int, qk_norm: bool) -> None:
    """The fused kernel against the layers' own eager ops on the GPU: same q, same cache (bf16: bit-exact without
    norms; with them, rare flips where the fp32 norm statistics round differently (4 of 6.1M elements in the
    first H200 run), small in absolute terms (rotary's sum can cancel, so not in relative terms); fp32: 1e-6)."""
    qkv, positions, cos, sin, (qw, kw), slots, cache = qkv_case(3000, head_dim, dtype)
    weights = (qw, kw) if qk_norm else (None, None)
    caches = [(cache.clone(), cache.clone()) for _ in range(2)]
    got = qk_norm_rope_store(qkv, positions, cos, sin, *weights, 1e-6, *caches[0], slots)
    want = qkv_ref.qk_norm_rope_store(qkv, positions, cos, sin, *weights, 1e-6, *caches[1], slots)
    for a, b in [(got, want), (caches[0][0], caches[1][0]), (caches[0][1], caches[1][1])]:
        if dtype == torch.float32:
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
        else:
            differ = (a != b).float().mean().item()
            assert differ <= (1e-5 if qk_norm else 0.0), f"{differ:.2e} of elements differ"
            torch.testing.assert_close(a.float(), b.float(), atol=2**-6, rtol=2**-7)


def test_qk_norm_rope_store_replays_in_a_cuda_graph() -> None:
    qkv, positions, cos, sin, (qw, kw), slots, cache = qkv_case(256, 128, torch.bfloat16)
    k_cache, v_cache = cache.clone(), cache.clone()
    qk_norm_rope_store(qkv, positions, cos, sin, qw, kw, 1e-6, k_cache, v_cache, slots)  # compile outside capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        q = qk_norm_rope_store(qkv, positions, cos, sin, qw, kw, 1e-6, k_cache, v_cache, slots)
    qkv.copy_(torch.randn_like(qkv))
    positions.copy_(torch.randint(0, 4096, positions.shape, device=DEVICE))
    graph.replay()
    torch.cuda.synchronize()
    ref_k, ref_v = cache.clone(), cache.clone()
    k_after_replay = k_cache.clone()
    want = qkv_ref.qk_norm_rope_store(qkv, positions, cos, sin, qw, kw, 1e-6, ref_k, ref_v, slots)
    for a, b in [(q, want), (k_after_replay, ref_k)]:
        assert (a != b).float().mean().item() <= 1e-5
        torch.testing.assert_close(a.float(), b.float(), atol=2**-6, rtol=2**-7)


# -- fused sampler (nanovllm_tui/kernels/triton_sample.py) at Qwen3's vocabulary ---------------------------------------------
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
