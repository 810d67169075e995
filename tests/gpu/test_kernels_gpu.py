"""Triton attention kernels vs the torch reference on CUDA at Qwen3-0.6B sizes, bf16 and fp32, plus CUDA-graph
replay (the fused sampler's tests are in test_sample_gpu.py)."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)
pytest.importorskip("triton", reason="Triton is not installed")

from nanovllm_tui.kernels import qkv_ref, torch_ref  # noqa: E402
from nanovllm_tui.kernels.triton_decode import paged_decode_attention  # noqa: E402
from nanovllm_tui.kernels.triton_prefill import paged_prefill_attention  # noqa: E402
from nanovllm_tui.kernels.triton_qkv import qk_norm_rope_store  # noqa: E402
from nanovllm_tui.kernels.triton_store_kv import store_kvcache  # noqa: E402

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
