"""Triton kernels vs the torch reference on CPU through the Triton interpreter, at tiny shapes."""

from __future__ import annotations

import os

# The interpreter is chosen when kernels are decorated, so this must precede any Triton import.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

pytest.importorskip("triton", reason="Triton is not installed; the Triton kernels cannot be tested")

from nanovllm_tui.kernels import decode_splits, torch_ref, triton_decode, triton_prefill
from nanovllm_tui.kernels.backend import TorchBackend
from nanovllm_tui.kernels.metadata import AttentionMetadata
from nanovllm_tui.kernels.triton_backend import TritonBackend
from nanovllm_tui.kernels.triton_store_kv import store_kvcache

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("these tests run Triton kernels on CPU tensors and need TRITON_INTERPRET=1", allow_module_level=True)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Max abs error relative to the reference's max magnitude."""
    return float((out.double() - ref.double()).abs().max() / ref.double().abs().max().clamp(min=1e-12))


def paged_cache(
    context_lens: list[int],
    block_size: int,
    num_kv_heads: int,
    head_dim: int,
    extra_cols: int = 1,
    gen: torch.Generator | None = None,
):
    """Random caches with shuffled block tables padded with -1; stale slots and spare blocks are NaN."""
    need = [(c + block_size - 1) // block_size for c in context_lens]
    num_blocks = sum(need) + 3
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.full(shape, float("nan"))
    v_cache = torch.full(shape, float("nan"))
    perm = torch.randperm(num_blocks, generator=gen)
    tables = torch.full((len(context_lens), max(need, default=0) + extra_cols), -1, dtype=torch.int32)
    used = 0
    for b, (ctx, n) in enumerate(zip(context_lens, need)):
        tables[b, :n] = perm[used : used + n].to(torch.int32)
        used += n
        slots = tables[b, :n].long()[:, None] * block_size + torch.arange(block_size)
        slots = slots.flatten()[:ctx]
        k_cache.view(-1, num_kv_heads, head_dim)[slots] = torch.randn(ctx, num_kv_heads, head_dim, generator=gen)
        v_cache.view(-1, num_kv_heads, head_dim)[slots] = torch.randn(ctx, num_kv_heads, head_dim, generator=gen)
    return k_cache, v_cache, tables


def clean(cache: torch.Tensor) -> torch.Tensor:
    """float64 copy with NaN stale slots zeroed: the reference masks them but NaN * 0 would still poison it."""
    return cache.nan_to_num(0.0).double()


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize("block_size", [16, 32])
def test_store_kvcache_matches_reference_and_skips_padded_slots(block_size: int, gen) -> None:
    num_kv_heads, head_dim, num_tokens = 2, 32, 7
    # Keys/values as strided views of a fused qkv tensor, the way attention layers hand them over.
    qkv = torch.randn(num_tokens, 4 + 2 * num_kv_heads, head_dim, generator=gen)
    key, value = qkv[:, 4 : 4 + num_kv_heads], qkv[:, 4 + num_kv_heads :]
    slots = torch.tensor([0, 5, -1, block_size + 3, 3 * block_size - 1, -1, 2 * block_size], dtype=torch.int64)
    k_cache = torch.randn(3, block_size, num_kv_heads, head_dim, generator=gen)
    v_cache = torch.randn(3, block_size, num_kv_heads, head_dim, generator=gen)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    torch_ref.store_kvcache(key, value, k_ref, v_ref, slots)
    store_kvcache(key, value, k_cache, v_cache, slots.to(torch.int32))
    assert torch.equal(k_cache, k_ref) and torch.equal(v_cache, v_ref)


# (block_size, head_dim, num_kv_heads, group)
SHAPES = [(16, 16, 2, 1), (32, 32, 2, 2), (16, 64, 1, 4), (32, 16, 2, 3)]


@pytest.mark.parametrize("block_size,head_dim,num_kv_heads,group", SHAPES)
def test_prefill_mixed_batch_with_prefix_and_single_token_rows(block_size, head_dim, num_kv_heads, group, gen):
    # (context_len, q_len): full prompt, prefix hit / later chunk, decode-like row, empty row, short prompt.
    seqs = [(37, 37), (50, 13), (20, 1), (9, 0), (5, 5)]
    context_lens = [c for c, _ in seqs]
    k_cache, v_cache, tables = paged_cache(context_lens, block_size, num_kv_heads, head_dim, gen=gen)
    q_lens = torch.tensor([ql for _, ql in seqs])
    cu = torch.nn.functional.pad(q_lens.cumsum(0), (1, 0)).to(torch.int32)
    q = torch.randn(int(cu[-1]), num_kv_heads * group, head_dim, generator=gen)
    ctx = torch.tensor(context_lens, dtype=torch.int32)
    scale = head_dim**-0.5
    out = triton_prefill.paged_prefill_attention(q, k_cache, v_cache, cu, ctx, tables, scale, int(q_lens.max()))
    ref = torch_ref.paged_prefill_attention(q.double(), clean(k_cache), clean(v_cache), cu, ctx, tables, scale)
    assert out.dtype == q.dtype
    assert rel_err(out, ref) < 1e-5


def test_prefill_tile_spanning_several_cache_blocks(gen, monkeypatch) -> None:
    # BLOCK_N = 32 over 16-token cache blocks exercises the per-position block lookup.
    monkeypatch.setattr(triton_prefill, "_config", lambda q, d, bs: (16, 32, 4, 1))
    k_cache, v_cache, tables = paged_cache([45, 30], 16, 2, 32, gen=gen)
    cu = torch.tensor([0, 20, 50], dtype=torch.int32)
    ctx = torch.tensor([45, 30], dtype=torch.int32)
    q = torch.randn(50, 4, 32, generator=gen)
    out = triton_prefill.paged_prefill_attention(q, k_cache, v_cache, cu, ctx, tables, 0.2, 30)
    ref = torch_ref.paged_prefill_attention(q.double(), clean(k_cache), clean(v_cache), cu, ctx, tables, 0.2)
    assert rel_err(out, ref) < 1e-5


@pytest.mark.parametrize("block_size,head_dim,num_kv_heads,group", SHAPES)
@pytest.mark.parametrize("num_splits,min_split", [(1, 256), (3, 256), (3, 16), (None, 16), (None, 32)])
def test_decode_very_different_lengths(block_size, head_dim, num_kv_heads, group, num_splits, min_split, gen):
    # min_split 16/32 at these lengths: long rows fill every split, short rows leave most splits empty
    # (never written; the reduce must skip them).
    context_lens = [1, 70, 17, 33]
    k_cache, v_cache, tables = paged_cache(context_lens, block_size, num_kv_heads, head_dim, extra_cols=2, gen=gen)
    q = torch.randn(len(context_lens), num_kv_heads * group, head_dim, generator=gen)
    ctx = torch.tensor(context_lens, dtype=torch.int32)
    scale = head_dim**-0.5
    out = triton_decode.paged_decode_attention(
        q, k_cache, v_cache, ctx, tables, scale, num_splits=num_splits, min_split_tokens=min_split
    )
    ref = torch_ref.paged_decode_attention(q.double(), clean(k_cache), clean(v_cache), ctx, tables, scale)
    assert out.dtype == q.dtype
    assert rel_err(out, ref) < 1e-5


def test_decode_padded_rows_give_zeros_not_nan(gen, monkeypatch) -> None:
    # CUDA-graph padding: rows with context 0 and an all -1 table; BLOCK_N 32 over 16-token blocks.
    monkeypatch.setattr(triton_decode, "_config", lambda q, d, bs: (32, 4, 1))
    k_cache, v_cache, tables = paged_cache([40, 0, 23, 0], 16, 2, 16, gen=gen)
    q = torch.randn(4, 4, 16, generator=gen)
    ctx = torch.tensor([40, 0, 23, 0], dtype=torch.int32)
    for splits, min_split in ((1, 256), (4, 256), (4, 32)):
        out = triton_decode.paged_decode_attention(
            q, k_cache, v_cache, ctx, tables, 0.25, num_splits=splits, min_split_tokens=min_split
        )
        assert torch.equal(out[[1, 3]], torch.zeros_like(out[[1, 3]]))
        real = torch.tensor([0, 2])
        ref = torch_ref.paged_decode_attention(
            q[real].double(), clean(k_cache), clean(v_cache), ctx[real], tables[real], 0.25
        )
        assert rel_err(out[real], ref) < 1e-5


def test_decode_row_limit_with_splits(gen) -> None:
    # A mixed graph's decode rows: only rows below the device-side limit are computed (split and reduced),
    # the rest of `out` (prefill rows) is left as it was.
    context_lens = [50, 7, 33, 20, 64]
    k_cache, v_cache, tables = paged_cache(context_lens, 16, 2, 32, gen=gen)
    q = torch.randn(len(context_lens), 4, 32, generator=gen)
    ctx = torch.tensor(context_lens, dtype=torch.int32)
    out = torch.full_like(q, 7.0)
    limit = torch.tensor([3], dtype=torch.int32)
    triton_decode.paged_decode_attention(
        q, k_cache, v_cache, ctx, tables, 0.2, num_splits=3, out=out, row_limit=limit, min_split_tokens=16
    )
    ref = torch_ref.paged_decode_attention(q[:3].double(), clean(k_cache), clean(v_cache), ctx[:3], tables[:3], 0.2)
    assert rel_err(out[:3], ref) < 1e-5
    assert torch.equal(out[3:], torch.full_like(out[3:], 7.0))


def test_num_splits_depends_on_shapes_only() -> None:
    # Big batches use one split, medium ones 2, smaller ones 8 to balance ragged contexts, few long sequences
    # fan out further; short capacity never splits.
    assert decode_splits.choose_num_splits(256, 8, 16, 256, 132) == 1
    assert decode_splits.choose_num_splits(192, 8, 16, 256, 132) == 2
    assert decode_splits.choose_num_splits(128, 8, 16, 256, 132) == 8
    assert decode_splits.choose_num_splits(4, 8, 64, 256, 132) > 8
    assert decode_splits.choose_num_splits(64, 8, 2, 256, 132) == 2  # capped by 512 tokens of capacity
    assert decode_splits.choose_num_splits(1, 8, 1, 16, 132) == 1


def test_backend_matches_torch_backend(gen) -> None:
    torch_backend, triton_backend = TorchBackend(), TritonBackend()
    assert triton_backend.name == "triton"
    block_size, num_kv_heads, head_dim = 16, 2, 32
    k_cache, v_cache, tables = paged_cache([21, 40], block_size, num_kv_heads, head_dim, gen=gen)
    k_cache, v_cache = k_cache.nan_to_num(0.0), v_cache.nan_to_num(0.0)

    # Prefill step: store 6 new tokens of sequence 1 (positions 34..39), then attend.
    key = torch.randn(9, num_kv_heads, head_dim, generator=gen)
    value = torch.randn(9, num_kv_heads, head_dim, generator=gen)
    pos = torch.arange(34, 40)
    slots = tables[1, pos // block_size].long() * block_size + pos % block_size
    slots = torch.cat([torch.tensor([-1, -1, -1]), slots])  # first 3 rows are padding
    caches = [(k_cache.clone(), v_cache.clone()) for _ in range(2)]
    for backend, (kc, vc) in zip((torch_backend, triton_backend), caches):
        backend.store_kvcache(key, value, kc, vc, slots)
    assert torch.equal(caches[0][0], caches[1][0]) and torch.equal(caches[0][1], caches[1][1])
    kc, vc = caches[1]

    meta = AttentionMetadata(
        slot_mapping=slots,
        context_lens=torch.tensor([21, 40], dtype=torch.int32),
        block_tables=tables,
        cu_seqlens_q=torch.tensor([0, 3, 9], dtype=torch.int32),
        max_seqlen_q=6,
        max_seqlen_k=40,
    )
    q = torch.randn(9, 4, head_dim, generator=gen)
    ref = torch_backend.forward(q, kc, vc, meta, 0.1)
    assert rel_err(triton_backend.forward(q, kc, vc, meta, 0.1), ref) < 1e-5

    meta = AttentionMetadata(
        slot_mapping=slots[:2], context_lens=meta.context_lens, block_tables=tables, is_decode=True
    )
    q = torch.randn(2, 4, head_dim, generator=gen)
    ref = torch_backend.forward(q, kc, vc, meta, 0.1)
    assert rel_err(triton_backend.forward(q, kc, vc, meta, 0.1), ref) < 1e-5


def _mixed_items(rng, num_decode: int, num_prefill: int, block_size: int, num_blocks: int):
    """Decode rows (one token, sampled) and prefill chunks (some after a cached prefix), shuffled."""
    import random as _random

    from nanovllm_tui.engine.sampling_params import SamplingParams
    from nanovllm_tui.engine.scheduling.sequence import Sequence

    free = list(range(num_blocks))
    rng.shuffle(free)
    items = []
    for i in range(num_decode + num_prefill):
        total = rng.randint(2, 70)
        seq = Sequence([rng.randrange(100) for _ in range(total)], SamplingParams(temperature=0))
        n = 1 if i < num_decode else rng.randint(2, min(total, 20))
        seq.num_computed_tokens = total - n
        seq.block_table = [free.pop() for _ in range(-(-total // block_size))]
        items.append((seq, n))
    _random.Random(rng.random()).shuffle(items)
    return items


@pytest.mark.parametrize("seed", range(3))
def test_mixed_batch_in_graph_layout_matches_reference(seed: int) -> None:
    """A prefill+decode batch written into a mixed CUDA graph's padded buffers (decode rows first, counts on
    the device, shape-fixed grids) gives the torch reference's attention on every real token; so does the
    eager mixed path (decode rows to the decode kernel, the rest to the prefill kernel)."""
    import random

    from nanovllm_tui.engine.execution.cuda_graph import CUDAGraphRunner
    from nanovllm_tui.engine.execution.input_builder import InputBuilder
    from nanovllm_tui.engine.execution.step import decodes_first

    rng = random.Random(seed)
    block_size, kv_heads, heads, head_dim, num_blocks = 16, 2, 4, 16, 64
    items = decodes_first(_mixed_items(rng, rng.randint(1, 4), rng.randint(1, 3), block_size, num_blocks))
    num_tokens = sum(n for _, n in items)
    graphs = CUDAGraphRunner(
        forward=None,
        device=torch.device("cpu"),
        max_num_seqs=10,
        max_model_len=80,
        block_size=block_size,
        max_num_batched_tokens=64,
    )
    built = InputBuilder(torch.device("cpu"), block_size).build(items, graphs)
    assert built.graph_tokens == 64 and built.num_decode_rows == sum(n == 1 for _, n in items)
    gen = torch.Generator().manual_seed(seed)
    k_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=gen)
    v_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=gen)
    q = torch.randn(64, heads, head_dim, generator=gen)

    _, _, graph_meta = graphs.mixed_meta(64)  # the views a captured graph reads
    out_graph = TritonBackend().forward(q, k_cache, v_cache, graph_meta, 0.25)[:num_tokens]

    eager = InputBuilder(torch.device("cpu"), block_size).build(items)
    t = eager.tensors
    meta = AttentionMetadata(
        slot_mapping=t["slot_mapping"],
        context_lens=t["context_lens"],
        block_tables=t["block_tables"],
        cu_seqlens_q=t["cu_seqlens_q"],
        max_seqlen_q=eager.max_seqlen_q,
        max_seqlen_k=eager.max_seqlen_k,
        num_decode_rows=eager.num_decode_rows,
    )
    ref = TorchBackend().forward(q[:num_tokens].double(), k_cache.double(), v_cache.double(), meta, 0.25)
    assert rel_err(out_graph, ref) < 1e-5
    assert rel_err(TritonBackend().forward(q[:num_tokens], k_cache, v_cache, meta, 0.25), ref) < 1e-5
