"""BlockManager: paged KV blocks with ref counts, prefix-cache hashes and an LRU of evictable cached blocks.

Every block is exactly one of: free (ref 0, no hash), used (ref > 0), cached (ref 0, hash kept,
reusable until evicted, least recently freed first).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable

import numpy as np
import xxhash

from nanovllm_tui.engine.scheduling.sequence import Sequence


def chain_hash(token_ids: list[int], parent: int) -> int:
    """Hash of one full block, chained to the hash of the block before it (-1 for the first)."""
    h = xxhash.xxh64()
    if parent != -1:
        h.update(parent.to_bytes(8, "little"))
    h.update(np.asarray(token_ids, dtype=np.int64).tobytes())
    return h.intdigest()


class Block:
    __slots__ = ("block_id", "hash", "ref_count")

    def __init__(self, block_id: int):
        self.block_id = block_id
        self.ref_count = 0
        self.hash = -1


class BlockManager:
    """Owns the block pool; the scheduler asks it for slots, it never decides who runs."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free_ids: deque[int] = deque(range(num_blocks))
        self.cached_lru: OrderedDict[int, None] = OrderedDict()
        self.hash_to_block: dict[int, int] = {}

    # -- counts ------------------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        return len(self.free_ids)

    @property
    def num_cached(self) -> int:
        return len(self.cached_lru)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self.free_ids) - len(self.cached_lru)

    @property
    def num_available(self) -> int:
        """Blocks an allocation may take: free ones, then cached ones by eviction."""
        return len(self.free_ids) + len(self.cached_lru)

    def blocks_needed(self, num_tokens: int) -> int:
        return (num_tokens + self.block_size - 1) // self.block_size

    # -- prefix cache --------------------------------------------------------------------------
    def _hashes_for(self, seq: Sequence, num_full: int) -> list[int]:
        """Chain hashes of seq's first num_full blocks, extending seq.block_hashes as needed."""
        hashes = seq.block_hashes
        bs = self.block_size
        while len(hashes) < num_full:
            i = len(hashes)
            parent = hashes[-1] if hashes else -1
            hashes.append(chain_hash(seq.token_ids[i * bs : (i + 1) * bs], parent))
        return hashes

    def find_cached_prefix(self, seq: Sequence) -> list[int]:
        """Block ids holding the longest cached prefix of seq; never the whole sequence (>= 1 token computes)."""
        if not self.enable_prefix_caching:
            return []
        hit: list[int] = []
        num_full = (seq.num_tokens - 1) // self.block_size
        for h in self._hashes_for(seq, num_full)[:num_full]:
            block_id = self.hash_to_block.get(h)
            if block_id is None:
                break
            hit.append(block_id)
        return hit

    # -- allocation ----------------------------------------------------------------------------
    def _take_block(self) -> int:
        if self.free_ids:
            block_id = self.free_ids.popleft()
        else:
            block_id, _ = self.cached_lru.popitem(last=False)
            block = self.blocks[block_id]
            if self.hash_to_block.get(block.hash) == block_id:
                del self.hash_to_block[block.hash]
            block.hash = -1
        self.blocks[block_id].ref_count = 1
        return block_id

    def allocate_slots(self, seq: Sequence, num_new_tokens: int, cached_blocks: list[int] | None = None) -> bool:
        """Grow seq's block table to hold num_computed + num_new_tokens tokens; False (and no change) if it can't."""
        if not cached_blocks:
            need = (seq.num_computed_tokens + num_new_tokens + self.block_size - 1) // self.block_size - len(
                seq.block_table
            )
            if need > len(self.free_ids) + len(self.cached_lru):
                return False
            for _ in range(need):
                seq.block_table.append(self._take_block())
            return True
        total = seq.num_computed_tokens + len(cached_blocks) * self.block_size + num_new_tokens
        num_new_blocks = self.blocks_needed(total) - len(seq.block_table) - len(cached_blocks)
        revived = sum(1 for b in cached_blocks if self.blocks[b].ref_count == 0)
        if num_new_blocks + revived > self.num_available:
            return False
        for block_id in cached_blocks:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self.cached_lru[block_id]
            block.ref_count += 1
            seq.block_table.append(block_id)
        seq.num_computed_tokens += len(cached_blocks) * self.block_size
        for _ in range(max(num_new_blocks, 0)):
            seq.block_table.append(self._take_block())
        return True

    def commit_full_blocks(self, seq: Sequence, num_tokens: int) -> None:
        """Publish hashes of seq's blocks that are full once num_tokens tokens have KV.

        Called when a step is scheduled: the forward writes each layer's K/V before attention
        reads it, so a request scheduled later in the same step may already share these blocks.
        """
        num_full = num_tokens // self.block_size
        if not self.enable_prefix_caching or num_full <= seq.num_committed_blocks:
            return
        hashes = self._hashes_for(seq, num_full)
        for i in range(seq.num_committed_blocks, num_full):
            h = hashes[i]
            block = self.blocks[seq.block_table[i]]
            if block.hash == -1 and h not in self.hash_to_block:
                block.hash = h
                self.hash_to_block[h] = block.block_id
        seq.num_committed_blocks = num_full

    def free(self, seq: Sequence, forget_hashes: bool = False) -> None:
        """Release seq's blocks, tail first so the LRU evicts a prefix's tail before its head.

        forget_hashes drops the hashes too (the step that was to write their KV failed).
        """
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if forget_hashes and block.hash != -1:
                self.hash_to_block.pop(block.hash, None)
                block.hash = -1
            if block.ref_count == 0:
                if block.hash != -1:
                    self.cached_lru[block_id] = None
                else:
                    self.free_ids.append(block_id)
        seq.block_table = []  # a new list, never cleared in place: see Sequence.block_table
        seq.num_computed_tokens = 0
        seq.num_committed_blocks = 0

    def reset_prefix_cache(self) -> None:
        """Forget every cached hash (e.g. after a weight change); cached blocks become free."""
        while self.cached_lru:
            block_id, _ = self.cached_lru.popitem(last=False)
            self.blocks[block_id].hash = -1
            self.free_ids.append(block_id)
        for block in self.blocks:
            block.hash = -1
        self.hash_to_block.clear()

    def check_invariants(self, live: Iterable[Sequence] = ()) -> None:
        """Raise AssertionError if the pool is inconsistent (tests and fuzzing call this)."""
        refs = [0] * self.num_blocks
        for seq in live:
            for b in seq.block_table:
                refs[b] += 1
        free, cached = set(self.free_ids), set(self.cached_lru)
        assert len(free) == len(self.free_ids) and not (free & cached)
        for block in self.blocks:
            assert block.ref_count == refs[block.block_id], (
                f"block {block.block_id}: ref {block.ref_count} != {refs[block.block_id]}"
            )
            if block.ref_count == 0:
                assert (block.block_id in cached) == (block.hash != -1), f"block {block.block_id} state"
                assert block.block_id in free or block.block_id in cached
            else:
                assert block.block_id not in free and block.block_id not in cached
        for h, b in self.hash_to_block.items():
            assert self.blocks[b].hash == h, f"hash entry {h} -> block {b} holding {self.blocks[b].hash}"
        assert self.num_free + self.num_cached + self.num_used == self.num_blocks
