"""The fake paged model under the fuzz harness (tests/fuzz_harness.py): its next-token function and the
synchronous runner that keeps a real paged cache of (token, position) pairs."""

from __future__ import annotations

import torch

VOCAB = 49152  # the demo model's tokenizer (real detokenization and stop strings)
EOS = 2  # its eos id (generation_config.json)
POISON = 7  # a prompt starting with this token gets non-finite logits on its first sample


class FakeStepError(RuntimeError):
    """Raised by the fake model when a test asks the next forward to fail."""


class HarnessViolation(AssertionError):
    """A broken contract seen by a fake runner. The engine turns a failed step into request errors, so each
    violation is also kept in runner.problems, and check_engine raises the first one."""


def next_token(context: tuple[tuple[int, int], ...], first_sample: bool) -> int:
    """The fake model: deterministic in the (token, position) pairs read from the cache."""
    if first_sample and context[0][0] == POISON:
        return -1  # what ModelRunner.sample returns for a non-finite logits row
    h = hash(context)
    if h % 29 == 0:
        return EOS
    return h % VOCAB


class PagedFakeRunner:
    """Stands in for ModelRunner.run: same contract (a token for each item whose tokens are all computed)."""

    def __init__(self, num_blocks: int, block_size: int):
        self.num_kvcache_blocks = num_blocks
        self.block_size = block_size
        self.cache: list[list[tuple[int, int] | None]] = [[None] * block_size for _ in range(num_blocks)]
        self.fail_next: bool | str = False  # True / "launch": the next launch raises; "collect": the next collect
        self.num_runs = 0
        self.label = ""  # put in front of every violation (tests write their seed / shape here)
        self.problems: list[str] = []

    device = torch.device("cpu")  # synchronous, so the engine never pipelines decode steps over it

    def memory_bytes(self) -> int:
        return 0

    def launch(self, items, after=None, keep=None) -> list[int | None]:
        """The engine's launch/collect pair: the fake computes at launch, collect hands the tokens over."""
        return self.run(items)

    def collect(self, tokens: list[int | None]) -> list[int | None]:
        return tokens

    def _violation(self, msg: str) -> None:
        msg = f"{self.label} {msg}".strip()
        self.problems.append(msg)
        raise HarnessViolation(msg)

    def run(self, items) -> list[int | None]:
        self.num_runs += 1
        if self.fail_next:
            self.fail_next = False
            raise FakeStepError("injected model failure")
        try:
            return self._run(items)
        except AssertionError as exc:  # the engine would swallow it into request errors: keep it for check_engine
            self.problems.append(f"{self.label} run #{self.num_runs}: {exc}".strip())
            raise

    def _run(self, items) -> list[int | None]:
        bs = self.block_size
        seen: set[int] = set()
        for seq, n in items:  # 1. write every item's K/V (a real forward writes before attention reads)
            assert id(seq) not in seen, f"request {seq.request_id} scheduled twice in one step"
            seen.add(id(seq))
            assert n >= 1 and seq.num_computed_tokens + n <= seq.num_tokens, (seq.request_id, n)
            assert len(seq.block_table) * bs >= seq.num_computed_tokens + n, "block table too short"
            for p in range(seq.num_computed_tokens, seq.num_computed_tokens + n):
                self.cache[seq.block_table[p // bs]][p % bs] = (seq.token_ids[p], p)
        out: list[int | None] = []
        for seq, n in items:  # 2. read each context back through the block table
            end = seq.num_computed_tokens + n
            if end != seq.num_tokens:
                out.append(None)
                continue
            ctx = tuple(self.cache[seq.block_table[p // bs]][p % bs] for p in range(end))
            assert ctx == tuple((t, p) for p, t in enumerate(seq.token_ids)), (
                f"request {seq.request_id}: KV cache read back differs from its tokens"
            )
            out.append(next_token(ctx, first_sample=end == seq.num_prompt_tokens))
        return out
