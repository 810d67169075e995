"""The InputBuilder's fill steps: a HostBatch written into the host views of its layout with vectorised numpy
(token-level inputs, graph padding, sampling rows and parameters)."""

from __future__ import annotations

from itertools import chain, repeat
from operator import getitem, is_

import numpy as np

from nanovllm_tui.engine.execution.input_batch import HostBatch
from nanovllm_tui.engine.execution.input_layout import Layout
from nanovllm_tui.engine.execution.input_staging import SAMPLE_PADDING, StagingBuffers
from nanovllm_tui.engine.sampling_params import SamplingParams
from nanovllm_tui.engine.scheduling.sequence import Sequence

HostViews = dict[str, np.ndarray]


def fill_tokens(
    a: HostViews, layout: Layout, batch: HostBatch, ahead: bool, block_size: int, staging: StagingBuffers
) -> None:
    """Token-level inputs: which row each token belongs to, then positions, ids and cache slots (with
    `ahead`, a decode batch's ids are left for the caller)."""
    bs, b, num_tokens = block_size, batch.num_rows, batch.num_tokens
    cu = a["cu_seqlens_q"]
    ns = batch.ns
    if ns is None:  # decode: one token per row, and row i's token is token i
        cu[: b + 1] = np.arange(b + 1)
        row = cu[:b]
        pos = batch.starts
        ids = 0 if ahead else np.fromiter(map(getitem, batch.tokens_l, batch.starts_l), np.int64, b)
    else:
        cu[0] = 0
        ns.cumsum(out=cu[1 : b + 1])
        row = np.repeat(np.arange(b), ns)
        pos = batch.starts[row] + (np.arange(num_tokens) - cu[:b][row])
        chunks = (t[st : st + n] for t, st, n in zip(batch.tokens_l, batch.starts_l, batch.ns_l))
        ids = np.fromiter(chain.from_iterable(chunks), np.int64, num_tokens)
    cu[b + 1 :] = num_tokens
    tbl = a["block_tables"]
    staging.fill_block_tables(tbl, layout, batch.tables_l, batch.lens)
    a["input_ids"][:num_tokens] = ids
    a["positions"][:num_tokens] = pos
    a["slot_mapping"][:num_tokens] = tbl[row, pos // bs].astype(np.int64) * bs + pos % bs
    a["context_lens"][:b] = batch.ends
    a["num_decode"][0] = batch.num_decode


def fill_padding(a: HostViews, layout: Layout, batch: HostBatch) -> None:
    """Padded rows and tokens (CUDA graphs): slot -1 writes nothing, context 0 reads nothing."""
    num_tokens = batch.num_tokens
    if layout.tokens > num_tokens:
        a["input_ids"][num_tokens:] = 0
        a["positions"][num_tokens:] = 0
        a["slot_mapping"][num_tokens:] = -1
    if layout.rows > batch.num_rows:
        a["context_lens"][batch.num_rows :] = 0


def fill_sample_rows(a: HostViews, layout: Layout, batch: HostBatch) -> None:
    """Which hidden row each sampled sequence reads (its last token) and its Philox counter (the position of
    the token being sampled); a decode graph's padding rows are greedy and never read back."""
    num_samples, b = len(batch.samplers), batch.num_rows
    cu = a["cu_seqlens_q"]
    if layout.samples > num_samples:
        for name, pad in SAMPLE_PADDING:
            a[name][num_samples:] = pad
    if batch.all_done:
        a["sample_rows"][:num_samples] = cu[1 : b + 1] - 1
        a["offsets"][:num_samples] = batch.totals
    else:
        a["sample_rows"][:num_samples] = cu[1 : b + 1][batch.done] - 1
        a["offsets"][:num_samples] = batch.totals[batch.done]


def fill_sampling_params(a: HostViews, samplers: list[Sequence]) -> tuple[bool, bool, bool, list[int | None] | None]:
    """Temperatures, top-k and top-p of the sampled rows; returns (all greedy, any top-k, any top-p, the rows'
    user seeds or None if no row has one), decided here on the host so sampling needs no device read."""
    n = len(samplers)
    sps: list[SamplingParams] = [seq.sampling_params for seq in samplers]
    p = sps[0] if sps else None
    temps, top_ks, top_ps = a["temperatures"][:n], a["top_ks"][:n], a["top_ps"][:n]
    user_seeds: list[int | None] | None
    if p is not None and all(map(is_, sps, repeat(p))):
        # One SamplingParams shared by the batch (LLM.generate): no per-row reads.
        temps[:] = p.temperature
        top_ks[:] = p.top_k
        top_ps[:] = p.top_p
        all_greedy, use_top_k, use_top_p = p.temperature == 0, p.top_k != -1, p.top_p < 1
        user_seeds = None if p.seed is None else [p.seed] * n
    else:
        temps[:] = temps_l = [sp.temperature for sp in sps]
        top_ks[:] = top_ks_l = [sp.top_k for sp in sps]
        top_ps[:] = top_ps_l = [sp.top_p for sp in sps]
        # Decided on the exact values, not on their float32 copies.
        all_greedy = not any(temps_l)
        use_top_k, use_top_p = top_ks_l.count(-1) != len(top_ks_l), bool(sps) and min(top_ps_l) < 1
        user_seeds = [sp.seed for sp in sps]
        if user_seeds.count(None) == len(user_seeds):
            user_seeds = None
    return bool(all_greedy), bool(use_top_k), bool(use_top_p), user_seeds


def as_int64(seed: int) -> int:
    """A seed's low 64 bits (as Sequence.generator uses them) as a signed int64 value."""
    return ((seed & 0xFFFF_FFFF_FFFF_FFFF) ^ (1 << 63)) - (1 << 63)
