"""Fused qkv prep (q/k RMSNorm + rotary + K/V store, nanovllm_tui/kernels/triton_qkv.py) vs the unfused eager ops, on CPU.

The kernel runs under the Triton interpreter; the reference (nanovllm_tui/kernels/qkv_ref.py) is checked to be bit for bit
the layers' own eager code, so "equal" here means the fused path rounds exactly where the unfused one does.
"""

from __future__ import annotations

import os

# The interpreter is chosen when kernels are decorated, so this must precede any Triton import.
os.environ.setdefault("TRITON_INTERPRET", "1")

from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("triton", reason="Triton is not installed; the Triton kernels cannot be tested")

from nanovllm_tui.kernels import qkv_ref, torch_ref
from nanovllm_tui.kernels.backend import TorchBackend
from nanovllm_tui.kernels.metadata import AttentionMetadata
from nanovllm_tui.kernels.triton_backend import TritonBackend
from nanovllm_tui.kernels.triton_qkv import qk_norm_rope_store
from nanovllm_tui.layers.layernorm import RMSNorm
from nanovllm_tui.layers.rotary_embedding import RotaryEmbedding
from nanovllm_tui.models.llama import LlamaAttention
from nanovllm_tui.models.qwen3 import Qwen3Attention

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("these tests run Triton kernels on CPU tensors and need TRITON_INTERPRET=1", allow_module_level=True)


def ulp_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance in units of last place between same-dtype float tensors (0 = bit-equal values)."""
    bits = {torch.bfloat16: torch.int16, torch.float32: torch.int32}[a.dtype]
    ia, ib = a.view(bits).long(), b.view(bits).long()
    sign = 1 << (8 * a.element_size() - 1)
    # Sign-magnitude to a monotonic integer line, so -0/+0 and neighbours across zero count right.
    ia = torch.where(ia < 0, -(ia + sign), ia)
    ib = torch.where(ib < 0, -(ib + sign), ib)
    return (ia - ib).abs()


def check_close(out: torch.Tensor, ref: torch.Tensor, what: str) -> int:
    """fp32: within 1e-6; bf16: within 1 ulp everywhere and almost always equal. Returns #elements that differ."""
    if out.dtype == torch.float32:
        torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6, equal_nan=True, msg=what)
        return int((out != ref).sum())
    ulps = ulp_diff(out, ref)
    differ = int((ulps > 0).sum())
    assert int(ulps.max()) <= 1, f"{what}: {int(ulps.max())} bf16 ulps apart"
    assert differ <= max(1, out.numel() // 200), f"{what}: {differ}/{out.numel()} elements differ"
    return differ


def make_inputs(dtype, head_dim, num_kv_heads, group, num_tokens=9, block_size=4, num_blocks=6, seed=0):
    """Strided qkv rows (a view into a wider buffer), random positions, slots with -1 rows, random caches."""
    gen = torch.Generator().manual_seed(seed)
    num_heads = num_kv_heads * group
    width = (num_heads + 2 * num_kv_heads) * head_dim
    buf = (torch.randn(num_tokens, width + 24, generator=gen) * 2).to(dtype)
    qkv = buf[:, 5 : 5 + width]  # row stride width + 24: not a contiguous [N, width] tensor
    rope = RotaryEmbedding(head_dim, 512, 10000.0)
    # Non-contiguous positions (every other entry of a buffer), in random order.
    positions = torch.randint(0, 512, (2 * num_tokens,), generator=gen)[::2]
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:num_tokens]
    slots[[2, num_tokens - 1]] = -1  # padded rows: nothing may reach the cache
    caches = [torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=gen).to(dtype) for _ in range(2)]
    weights = [(1 + 0.3 * torch.randn(head_dim, generator=gen)).to(dtype) for _ in range(2)]
    return qkv, positions, rope, slots, caches, weights


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("qk_norm", [True, False])
def test_reference_is_the_layers_eager_path(dtype, qk_norm) -> None:
    """qkv_ref (self-contained: kernels import no layer) gives exactly what the layers' RMSNorm and RotaryEmbedding
    modules and the torch store give, so comparing the kernel with it compares it with the unfused model path."""
    qkv, positions, rope, slots, (k_cache, v_cache), (qw, kw) = make_inputs(dtype, 32, 2, 2, seed=5)
    num_kv_heads, head_dim = 2, 32
    q_norm, k_norm = RMSNorm(head_dim, 1e-6), RMSNorm(head_dim, 1e-6)
    q_norm.weight.data, k_norm.weight.data = qw, kw
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    q_ref = qkv_ref.qk_norm_rope_store(
        qkv,
        positions,
        rope.cos_cached,
        rope.sin_cached,
        *((qw, kw) if qk_norm else (None, None)),
        1e-6,
        k_ref,
        v_ref,
        slots,
    )
    kv = num_kv_heads * head_dim
    q, k, v = qkv.split([qkv.shape[1] - 2 * kv, kv, kv], dim=-1)
    q, k = q.reshape(len(q), -1, head_dim), k.reshape(len(k), num_kv_heads, head_dim)
    if qk_norm:
        q, k = q_norm(q), k_norm(k)
    q, k = rope(positions, q, k)
    torch_ref.store_kvcache(k, v.reshape(len(v), num_kv_heads, head_dim), k_cache, v_cache, slots)
    assert torch.equal(q_ref, q) and torch.equal(k_ref, k_cache) and torch.equal(v_ref, v_cache)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("qk_norm", [True, False])
@pytest.mark.parametrize("head_dim,num_kv_heads,group", [(16, 2, 2), (32, 2, 1), (64, 1, 2), (32, 2, 3)])
def test_fused_matches_unfused_reference(dtype, qk_norm, head_dim, num_kv_heads, group) -> None:
    qkv, positions, rope, slots, (k_cache, v_cache), (qw, kw) = make_inputs(dtype, head_dim, num_kv_heads, group)
    assert not qkv.is_contiguous() and not positions.is_contiguous()
    if not qk_norm:
        qw = kw = None
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    before = k_cache.clone(), v_cache.clone()
    q_ref = qkv_ref.qk_norm_rope_store(
        qkv, positions, rope.cos_cached, rope.sin_cached, qw, kw, 1e-6, k_ref, v_ref, slots
    )
    q = qk_norm_rope_store(qkv, positions, rope.cos_cached, rope.sin_cached, qw, kw, 1e-6, k_cache, v_cache, slots)
    assert q.shape == (qkv.shape[0], num_kv_heads * group, head_dim) and q.is_contiguous()
    differ = check_close(q, q_ref, "q") + check_close(k_cache, k_ref, "k_cache")
    assert torch.equal(v_cache, v_ref)  # values are copied, never rounded
    # Slots nobody wrote (including where the -1 rows would have gone) keep their old contents.
    written = torch.zeros(k_cache.shape[0] * k_cache.shape[1], dtype=torch.bool)
    written[slots[slots >= 0]] = True
    for cache, old in zip((k_cache, v_cache), before):
        flat, flat_old = cache.view(written.numel(), -1), old.view(written.numel(), -1)
        assert torch.equal(flat[~written], flat_old[~written])
        assert not torch.equal(flat[written], flat_old[written])
    if dtype == torch.bfloat16:
        print(f"bf16 D={head_dim} group={group} qk_norm={qk_norm}: {differ} elements differ by 1 ulp")


def test_head_dim_128_bf16_bit_exact() -> None:
    """The Qwen3 shape (D=128, group 2): no element may differ at all in bf16."""
    qkv, positions, rope, slots, (k_cache, v_cache), (qw, kw) = make_inputs(torch.bfloat16, 128, 2, 2, seed=3)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    q_ref = qkv_ref.qk_norm_rope_store(
        qkv, positions, rope.cos_cached, rope.sin_cached, qw, kw, 1e-6, k_ref, v_ref, slots
    )
    q = qk_norm_rope_store(qkv, positions, rope.cos_cached, rope.sin_cached, qw, kw, 1e-6, k_cache, v_cache, slots)
    assert torch.equal(q, q_ref) and torch.equal(k_cache, k_ref) and torch.equal(v_cache, v_ref)


def test_bad_inputs_raise_value_error() -> None:
    qkv, positions, rope, slots, (k_cache, v_cache), (qw, kw) = make_inputs(torch.float32, 16, 2, 2)
    args = (positions, rope.cos_cached, rope.sin_cached)
    with pytest.raises(ValueError, match="dtype"):
        qk_norm_rope_store(qkv, *args, qw.to(torch.bfloat16), kw, 1e-6, k_cache, v_cache, slots)
    with pytest.raises(ValueError, match="qkv"):
        qk_norm_rope_store(qkv[:, :-8], *args, qw, kw, 1e-6, k_cache, v_cache, slots)
    with pytest.raises(ValueError, match="not a multiple"):
        qk_norm_rope_store(qkv[:, :-16], *args, qw, kw, 1e-6, k_cache, v_cache, slots)
    with pytest.raises(ValueError, match="one entry per token"):
        qk_norm_rope_store(qkv, *args, qw, kw, 1e-6, k_cache, v_cache, slots[:-1])
    with pytest.raises(ValueError, match="power of two"):
        qk_norm_rope_store(qkv[:, :-12], *args, qw, kw, 1e-6, k_cache[..., :12], v_cache[..., :12], slots)


# -- layer level: LlamaAttention / Qwen3Attention with the Triton backend attached ------------------------------


class UnfusedTritonBackend(TritonBackend):
    """Triton attention with the layers' own norm/rotary/store: isolates the fused prep from the attention kernels."""

    fuses_qkv_prep = False


def make_layer(cls, dtype, seed=0):
    config = SimpleNamespace(
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=256,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
    )
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # as the model runner builds models: cos/sin tables stay fp32
    try:
        layer = cls(config)
    finally:
        torch.set_default_dtype(default)
    gen = torch.Generator().manual_seed(seed)
    for p in layer.parameters():
        p.data.copy_(torch.randn(p.shape, generator=gen) * 0.5 + (1.0 if p.dim() == 1 else 0.0))
    return layer


def run_layer(layer, backend, dtype, steps):
    """Prefill two sequences, then decode one token each; returns the outputs and the final caches."""
    block_size, num_blocks = 16, 6
    shape = (num_blocks, block_size, layer.num_kv_heads, layer.head_dim)
    layer.attn.k_cache, layer.attn.v_cache = torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype)
    layer.attn.backend = backend
    outs = []
    for x, positions, meta in steps:
        with torch.inference_mode():
            outs.append(layer(positions, x.to(dtype), meta))
    return outs, layer.attn.k_cache, layer.attn.v_cache


def layer_steps(gen):
    tables = torch.tensor([[3, 0, -1], [5, 1, 2]], dtype=torch.int32)
    lens = [7, 20]
    pos = torch.cat([torch.arange(n) for n in lens])
    slots = torch.cat([tables[b, torch.arange(n) // 16].long() * 16 + torch.arange(n) % 16 for b, n in enumerate(lens)])
    prefill = AttentionMetadata(
        slot_mapping=slots,
        context_lens=torch.tensor(lens, dtype=torch.int32),
        block_tables=tables,
        cu_seqlens_q=torch.tensor([0, 7, 27], dtype=torch.int32),
        max_seqlen_q=20,
        max_seqlen_k=20,
    )
    dpos = torch.tensor(lens)
    decode = AttentionMetadata(
        slot_mapping=torch.stack([tables[b, p // 16].long() * 16 + p % 16 for b, p in enumerate(dpos)]),
        context_lens=torch.tensor([8, 21], dtype=torch.int32),
        block_tables=tables,
        cu_seqlens_q=torch.tensor([0, 1, 2], dtype=torch.int32),
        max_seqlen_k=21,
        is_decode=True,
    )
    return [(torch.randn(27, 64, generator=gen), pos, prefill), (torch.randn(2, 64, generator=gen), dpos, decode)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cls", [Qwen3Attention, LlamaAttention])
def test_layer_fused_path_matches_unfused(cls, dtype, monkeypatch) -> None:
    steps = layer_steps(torch.Generator().manual_seed(1))
    calls = []
    fused = TritonBackend()
    monkeypatch.setattr(fused, "store_kvcache", lambda *a: calls.append("store"))
    original = fused.prepare_qkv
    monkeypatch.setattr(fused, "prepare_qkv", lambda *a: calls.append("prep") or original(*a))
    out, k_cache, v_cache = run_layer(make_layer(cls, dtype), fused, dtype, steps)
    assert calls == ["prep", "prep"]  # one fused call per step, no separate store
    # Same Triton attention kernels, prep unfused: everything must agree to the rounding of the prep.
    out_u, k_u, v_u = run_layer(make_layer(cls, dtype), UnfusedTritonBackend(), dtype, steps)
    check_close(k_cache, k_u, "k_cache")
    assert torch.equal(v_cache, v_u)
    for a, b in zip(out, out_u):
        if dtype == torch.bfloat16:
            assert torch.equal(a, b)  # the prep was bit-exact above, so attention saw identical inputs
        else:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    if dtype == torch.float32:  # and the torch backend (the CPU reference path) agrees too
        out_t, k_t, _ = run_layer(make_layer(cls, dtype), TorchBackend(), dtype, steps)
        check_close(k_cache, k_t, "k_cache vs torch backend")
        for a, b in zip(out, out_t):  # different attention kernels: compare relative to the output's scale
            torch.testing.assert_close(a, b, atol=1e-5 * float(b.abs().max()), rtol=1e-5)


def test_layer_without_cache_runs_unfused() -> None:
    """Warm-up/profiling runs have no KV cache yet: the layer must not call the fused op."""
    layer = make_layer(Qwen3Attention, torch.float32)
    layer.attn.backend = TritonBackend()
    assert not layer.attn.fuses_qkv_prep
    layer.attn.k_cache = torch.zeros(2, 16, 2, 32)
    layer.attn.v_cache = torch.zeros(2, 16, 2, 32)
    assert layer.attn.fuses_qkv_prep
    layer.attn.backend = TorchBackend()
    assert not layer.attn.fuses_qkv_prep


# -- engine level: a tiny Qwen3 through the whole engine, Triton backend (interpreted) vs torch backend ----------


def test_engine_triton_backend_greedy_matches_torch(tiny_qwen3_gqa_dir, monkeypatch) -> None:
    from engine_helpers import check_clean, mixed_prompts

    import nanovllm_tui.engine.execution.model_runner as model_runner
    from nanovllm_tui.engine import LLM, SamplingParams

    prompts = [p for p in mixed_prompts() if len(p) <= 20] + [mixed_prompts()[-1]]  # short ones + a prefix hit
    params = SamplingParams(temperature=0, max_tokens=6)
    opts = dict(kvcache_block_size=16, max_model_len=128, num_kvcache_blocks=64, max_num_batched_tokens=48)

    def generate(backend):
        monkeypatch.setattr(model_runner, "get_backend", lambda *a: backend)
        llm = LLM(str(tiny_qwen3_gqa_dir), attention_backend="torch", **opts)
        outs = [o["token_ids"] for o in llm.generate(prompts, params, use_tqdm=False)]
        check_clean(llm)
        return outs

    calls = []
    triton_backend = TritonBackend()
    original = triton_backend.prepare_qkv
    monkeypatch.setattr(triton_backend, "prepare_qkv", lambda *a: calls.append(1) or original(*a))
    got = generate(triton_backend)
    assert calls, "the engine never took the fused path"
    assert got == generate(TorchBackend())
