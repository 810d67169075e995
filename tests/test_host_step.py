"""Host-side shortcuts of a decode step: incremental block tables, stop rules resolved at admission, seed draws."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from test_input_builder import BLOCK, reference

from nanovllm_tui.engine.execution.cuda_graph import CUDAGraphRunner
from nanovllm_tui.engine.execution.input_builder import InputBuilder
from nanovllm_tui.engine.sampling_params import SamplingParams
from nanovllm_tui.engine.scheduling.sequence import Sequence


class _Blocks:
    def __init__(self) -> None:
        self.next = 0

    def take(self) -> int:
        self.next += 1
        return self.next


def _seq(rng: random.Random, blocks: _Blocks) -> Sequence:
    seq = Sequence([rng.randrange(1000) for _ in range(rng.randint(1, 60))], SamplingParams())
    seq.num_computed_tokens = seq.num_tokens - 1
    seq.block_table = [blocks.take() for _ in range(-(-seq.num_tokens // BLOCK))]
    return seq


@pytest.mark.parametrize("graphs", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_block_tables_stay_right_across_decode_steps(graphs: bool, seed: int) -> None:
    """The builder rewrites only rows whose table grew; tables replaced, rows dropped or reordered still come out right."""
    rng = random.Random(seed)
    blocks = _Blocks()
    runner = (
        CUDAGraphRunner(forward=None, device=torch.device("cpu"), max_num_seqs=48, max_model_len=2048, block_size=BLOCK)
        if graphs
        else None
    )  # buffers and buckets only
    builder = InputBuilder(torch.device("cpu"), BLOCK)
    pool = [_seq(rng, blocks) for _ in range(rng.randint(2, 30))]
    for step in range(80):
        items = [(s, 1) for s in pool]
        built = builder.build(items, runner)
        ref = reference(items)
        assert built.tensors["slot_mapping"].tolist()[: len(items)] == ref["slot_mapping"], step
        width = built.layout.width
        assert built.tensors["block_tables"][: len(items)].tolist() == [
            s.block_table + [-1] * (width - len(s.block_table)) for s in pool
        ], step
        for s in pool:  # the step's token, and a block appended (in place) when it crosses a boundary
            s.token_ids.append(rng.randrange(1000))
            s.num_computed_tokens += 1
            if len(s.block_table) * BLOCK < s.num_tokens:
                s.block_table.append(blocks.take())
        r = rng.random()
        if r < 0.1 and len(pool) > 1:
            pool.pop(rng.randrange(len(pool)))
        elif r < 0.2:  # preempted and admitted again: a new table, same length
            victim = rng.choice(pool)
            victim.block_table = [blocks.take() for _ in victim.block_table]
        elif r < 0.25:
            pool.insert(rng.randrange(len(pool) + 1), _seq(rng, blocks))
        elif r < 0.3:
            rng.shuffle(pool)


def test_stop_rules_resolved_at_admission() -> None:
    """eos stops unless ignore_eos; stop_token_ids always; the length limit is capped by max_model_len."""
    sp = SamplingParams(max_tokens=10, stop_token_ids=[5])
    seq = Sequence([1, 2, 3], sp, eos_token_ids=(0, 9), max_model_len=100)
    assert seq.stop_token_ids == {0, 5, 9} and seq.max_num_tokens == 13
    seq = Sequence([1, 2, 3], SamplingParams(max_tokens=10, ignore_eos=True), eos_token_ids=(0,), max_model_len=8)
    assert seq.stop_token_ids == frozenset() and seq.max_num_tokens == 8


def test_fresh_seeds_are_the_integers_stream() -> None:
    """The fast draw gives exactly rng.integers' full-range int64 values (same stream as before the shortcut)."""
    builder = InputBuilder(torch.device("cpu"), BLOCK)
    builder._rng, rng = np.random.default_rng(7), np.random.default_rng(7)
    for n in (1, 5, 256):
        want = rng.integers(-(2**63), 2**63 - 1, size=n, dtype=np.int64, endpoint=True)
        assert builder._fresh_seeds(n).tolist() == want.tolist()


def test_final_only_requests_get_one_output_with_everything() -> None:
    """stream=False (LLM.generate, the offline bench): no per-step deltas, one final output carrying every
    completion token and the whole text, identical to what the streamed twin's deltas add up to."""
    from fuzz_harness import make_engine

    engine = make_engine(kvcache_block_size=16, num_kvcache_blocks=64, max_num_seqs=4, max_model_len=256)
    prompt = [11, 12, 13, 14, 15]
    got: dict[str, list] = {"streamed": [], "final": []}
    for rid, stream in (("streamed", True), ("final", False)):
        engine.add_request(
            prompt, SamplingParams(temperature=0, max_tokens=40, ignore_eos=True), request_id=rid, stream=stream
        )
    while engine.has_unfinished_requests():
        for out in engine.step():
            got[out.request_id].append(out)
    streamed, final = got["streamed"], got["final"]
    assert len(streamed) == 40 and len(final) == 1 and final[0].finished
    assert final[0].token_ids == [t for o in streamed for t in o.token_ids]
    assert final[0].text == "".join(o.text for o in streamed) != ""
    assert final[0].finish_reason == streamed[-1].finish_reason == "length"
