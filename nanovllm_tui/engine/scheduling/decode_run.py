"""DecodeRun: a pipelined run of decode steps over one unchanged batch, its per-row state kept in numpy.

While no request joins or leaves, each step of the run is the last one plus one token per row. What the
scheduler must still check every step (does a row reach its length limit, does it need a new block, does
the step fill a block whose hash can be published) then takes a few vector operations over the rows
instead of a Python pass over every request: the host cost of a step no longer grows with attribute reads.
"""

from __future__ import annotations

from operator import attrgetter, itemgetter

import numpy as np

from nanovllm_tui.engine.scheduling.sequence import Sequence

_first = itemgetter(0)
_computed, _max_num_tokens = attrgetter("num_computed_tokens"), attrgetter("max_num_tokens")


class DecodeRun:
    """The rows of `items` (all (seq, 1) decodes), as of the step in flight when the run was formed.

    `computed` is each row's num_computed_tokens before the step in flight; it moves on by one each time the
    same list comes back (`advance`), which is exact because every row of the list gets one token per step.
    """

    def __init__(self, items: list[tuple[Sequence, int]], block_size: int, max_model_len: int):
        seqs = list(map(_first, items))
        n = len(seqs)
        self.items = items
        self.seqs = seqs
        self.block_size = block_size
        self.computed = np.fromiter(map(_computed, seqs), np.int64, n)
        self.room = np.fromiter((len(s.block_table) for s in seqs), np.int64, n) * block_size
        self.limit = np.minimum(np.fromiter(map(_max_num_tokens, seqs), np.int64, n), max_model_len)

    def advance(self) -> None:
        """The list is in flight again: one step later than the last time it was scheduled."""
        self.computed += 1

    def any_stops(self) -> bool:
        """Does a row reach its length limit with the token of the step in flight (so it does not go on)?"""
        # In flight: KV of computed + 1 tokens, and the token it samples makes computed + 2.
        return bool((self.computed + 2 >= self.limit).any())

    def rows_short_of_room(self) -> list[int]:
        """Rows whose block table cannot hold the next step's token (KV for computed + 2 tokens)."""
        return np.flatnonzero(self.computed + 2 > self.room).tolist()

    def grew(self, row: int) -> None:
        self.room[row] = len(self.seqs[row].block_table) * self.block_size

    def rows_filling_a_block(self) -> list[int]:
        """Rows whose next step (computing position computed + 1) completes a block."""
        return np.flatnonzero((self.computed + 2) % self.block_size == 0).tolist()
