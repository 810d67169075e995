"""InputBuilder against a plain per-token construction of the same step inputs, incl. CUDA-graph padding."""

from __future__ import annotations

import random

import pytest
import torch

from nanovllm_tui.engine.execution.cuda_graph import CUDAGraphRunner, batch_buckets, graph_width
from nanovllm_tui.engine.execution.input_builder import InputBuilder
from nanovllm_tui.engine.execution.input_layout import Layout
from nanovllm_tui.engine.sampling_params import SamplingParams
from nanovllm_tui.engine.scheduling.sequence import Sequence

BLOCK = 16


def random_batch(rng: random.Random, num_seqs: int, decode: bool) -> list[tuple[Sequence, int]]:
    """Sequences with shuffled block tables; decode rows add one token, others a chunk (sampled or not)."""
    free = list(range(4096))
    rng.shuffle(free)
    items = []
    for _ in range(num_seqs):
        total = rng.randint(1, 300)
        sp = SamplingParams(temperature=rng.choice([0.0, 0.7]), top_k=rng.choice([-1, 5]), top_p=rng.choice([1.0, 0.9]))
        seq = Sequence([rng.randrange(1000) for _ in range(total)], sp)
        n = 1 if decode else rng.randint(1, total)
        seq.num_computed_tokens = total - n if decode or rng.random() < 0.5 else rng.randint(0, total - n)
        blocks = -(-(seq.num_computed_tokens + n) // BLOCK) + rng.randint(0, 1)  # sometimes a lookahead block
        seq.block_table = [free.pop() for _ in range(blocks)]
        items.append((seq, n))
    return items


def reference(items: list[tuple[Sequence, int]]) -> dict[str, list]:
    ids, pos, slots, cu, ctx, rows = [], [], [], [0], [], []
    for seq, n in items:
        start = seq.num_computed_tokens
        for p in range(start, start + n):
            ids.append(seq.token_ids[p])
            pos.append(p)
            slots.append(seq.block_table[p // BLOCK] * BLOCK + p % BLOCK)
        cu.append(cu[-1] + n)
        ctx.append(start + n)
        if start + n == seq.num_tokens:
            rows.append(cu[-1] - 1)
    return dict(input_ids=ids, positions=pos, slot_mapping=slots, cu_seqlens_q=cu, context_lens=ctx, sample_rows=rows)


@pytest.mark.parametrize("decode", [True, False])
@pytest.mark.parametrize("seed", range(4))
def test_build_matches_reference(decode: bool, seed: int) -> None:
    rng = random.Random(seed)
    builder = InputBuilder(torch.device("cpu"), BLOCK)
    for step in range(3):  # reused buffers must not leak the previous step's data
        items = random_batch(rng, rng.randint(1, 40), decode)
        built = builder.build(items)
        ref = reference(items)
        t = built.tensors
        for name, want in ref.items():
            assert t[name].tolist() == want, (name, step)
        width = max(len(s.block_table) for s, _ in items)
        assert t["block_tables"].tolist() == [s.block_table + [-1] * (width - len(s.block_table)) for s, _ in items]
        samplers = [s for s, n in items if s.num_computed_tokens + n == s.num_tokens]
        assert built.samplers == samplers
        assert t["temperatures"].tolist() == pytest.approx([s.sampling_params.temperature for s in samplers])
        assert t["top_ks"].tolist() == [s.sampling_params.top_k for s in samplers]
        assert built.all_greedy == all(s.sampling_params.temperature == 0 for s in samplers)
        assert built.is_decode == decode
        assert built.max_seqlen_k == max(ref["context_lens"])


def test_graph_padding_layout() -> None:
    """Padded rows get slot -1 and context 0; the real rows land where the graph's captured views point."""
    rng = random.Random(7)
    max_model_len = 300
    width = graph_width(max_model_len, BLOCK)
    buckets = batch_buckets(48)
    assert buckets == [1, 2, 4, 8, 16, 32, 48]
    graphs = CUDAGraphRunner(
        forward=None, device=torch.device("cpu"), max_num_seqs=48, max_model_len=max_model_len, block_size=BLOCK
    )  # buffers and buckets only; capturing needs CUDA
    target = graphs.buffers
    builder = InputBuilder(torch.device("cpu"), BLOCK)
    items = random_batch(rng, 11, decode=True)
    built = builder.build(items, graphs)
    assert built.graph_bucket == 16
    captured = Layout(16, 16, width, 16).views(target.b64, target.b32, target.bf)  # what capture saw
    ref = reference(items)
    assert captured["input_ids"].tolist()[:11] == ref["input_ids"]
    assert captured["positions"].tolist()[:11] == ref["positions"]
    assert captured["slot_mapping"].tolist() == ref["slot_mapping"] + [-1] * 5
    assert captured["context_lens"].tolist() == ref["context_lens"] + [0] * 5
    assert captured["block_tables"][:11].tolist() == [
        s.block_table + [-1] * (width - len(s.block_table)) for s, _ in items
    ]
    assert built.tensors["sample_rows"].tolist() == list(range(11))
    # A sequence of exactly max_model_len tokens fits the graph's block table; prefill steps never use graphs.
    assert -(-max_model_len // BLOCK) <= width
    assert builder.build(random_batch(rng, 3, decode=False), graphs).graph_bucket == 0
    assert builder.build(random_batch(rng, 49, decode=True), graphs).graph_bucket == 0  # past the largest bucket


def test_buffers_first_built_in_inference_mode_stay_writable() -> None:
    """The KV-sizing warm-up builds the first batch under inference_mode; later steps run outside it."""
    rng = random.Random(3)
    builder = InputBuilder(torch.device("cpu"), BLOCK)
    with torch.inference_mode():
        builder.build(random_batch(rng, 5, decode=False))
    items = random_batch(rng, 5, decode=True)
    assert builder.build(items).tensors["input_ids"].tolist() == reference(items)["input_ids"]


def test_shared_sampling_params_fill() -> None:
    """One SamplingParams object shared by the batch (LLM.generate) takes the broadcast path: same values."""
    rng = random.Random(5)
    items = random_batch(rng, 20, decode=True)
    shared = SamplingParams(temperature=0.5, top_k=7, top_p=0.8)
    for seq, _ in items:
        seq.sampling_params = shared
    built = InputBuilder(torch.device("cpu"), BLOCK).build(items)
    t = built.tensors
    assert t["temperatures"].tolist() == pytest.approx([0.5] * 20)
    assert t["top_ks"].tolist() == [7] * 20 and t["top_ps"].tolist() == pytest.approx([0.8] * 20)
    assert not built.all_greedy and built.use_top_k and built.use_top_p
