"""Mutation check of the scheduler fuzzer: seed known bugs into the block manager / scheduler / engine
and report whether tests/test_fuzz_scheduler.py finds each (and how long its shrunk example is).

    python3 scripts/fuzz_mutants.py [max_examples]   # prints a table; CPU only, ~1 min per mutant
"""

from __future__ import annotations

import inspect
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import test_fuzz_scheduler as fuzz  # noqa: E402
from hypothesis import HealthCheck, Phase, settings  # noqa: E402

import nanovllm_tui.engine.llm_engine as eng_mod  # noqa: E402
import nanovllm_tui.engine.scheduling.block_manager as bm_mod  # noqa: E402
import nanovllm_tui.engine.scheduling.scheduler as sched_mod  # noqa: E402

# name -> (module, class, method, old source fragment, new source fragment)
MUTANTS = {
    "failed step keeps its unwritten hashes": (
        bm_mod,
        "BlockManager",
        "free",
        "if forget_hashes and block.hash != -1:",
        "if False:",
    ),
    "prefix hit may cover the whole prompt": (
        bm_mod,
        "BlockManager",
        "find_cached_prefix",
        "(seq.num_tokens - 1) // self.block_size",
        "seq.num_tokens // self.block_size",
    ),
    "eviction leaves a stale hash entry": (
        bm_mod,
        "BlockManager",
        "_take_block",
        "del self.hash_to_block[block.hash]",
        "pass",
    ),
    "hash published one token early": (
        bm_mod,
        "BlockManager",
        "commit_full_blocks",
        "num_tokens // self.block_size",
        "(num_tokens + 1) // self.block_size",
    ),
    "allocation one block short at boundaries": (
        bm_mod,
        "BlockManager",
        "allocate_slots",
        "self.blocks_needed(total)",
        "self.blocks_needed(total - 1)",
    ),
    "preempted victim stays in the batch": (
        sched_mod,
        "Scheduler",
        "_preempt",
        "batch.items = [(s, n) for s, n in batch.items if s is not seq]",
        "pass",
    ),
    "abort forgets to free blocks": (sched_mod, "Scheduler", "remove", "self.block_manager.free(seq)", "pass"),
    "decode that can't grow gives up instead of preempting": (
        sched_mod,
        "Scheduler",
        "_schedule_running",
        "victim = running.pop()",
        "return budget",
    ),
    "computed count not advanced on sample": (
        eng_mod,
        "LLMEngine",
        "_process",
        "seq.num_computed_tokens += n",
        "seq.num_computed_tokens += n - (token is not None and n > 1)",
    ),
}


def apply(module, cls_name: str, meth: str, old: str, new: str):
    cls = getattr(module, cls_name)
    original = cls.__dict__[meth]
    src = textwrap.dedent(inspect.getsource(original))
    if old not in src:  # the code moved on since the mutant was written
        return None
    namespace = dict(vars(module))
    exec(compile(src.replace(old, new, 1), f"<mutant {cls_name}.{meth}>", "exec"), namespace)
    setattr(cls, meth, namespace[meth])
    return lambda: setattr(cls, meth, original)


def run(max_examples: int) -> tuple[bool, str]:
    fuzz.EngineMachine.TestCase.settings = settings(
        max_examples=max_examples,
        stateful_step_count=25,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
        phases=[Phase.explicit, Phase.generate],
    )  # found or not is the question; shrinking can take minutes
    try:
        fuzz.EngineMachine.TestCase().runTest()
    except BaseException as exc:
        msg = str(exc).strip().splitlines()
        return True, (msg[0] if msg else type(exc).__name__)[:70]
    return False, ""


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    print(
        f"| seeded bug | found (within {n} examples, CI settings, no shrinking) | seconds | first line of the failure |"
    )
    print("|---|---|---|---|")
    for name, spec in MUTANTS.items():
        undo = apply(*spec)
        if undo is None:
            print(f"| {name} | skipped: source changed | | |", flush=True)
            continue
        start = time.monotonic()
        try:
            found, msg = run(n)
        finally:
            undo()
        print(f"| {name} | {'yes' if found else 'NO'} | {time.monotonic() - start:.0f} | {msg} |", flush=True)


if __name__ == "__main__":
    main()
