"""Cost of hostile inputs on the request path: a 1 MB prompt (tokenizing vs. the length bound that rejects
it first) and incremental detokenization with thousands of stop strings, in ms.

    PYTHONPATH=. python3 benchmarks/hostile_input_bench.py [--model DIR] [--tokens 300]
"""

from __future__ import annotations

import argparse
import random
import time
from functools import partial

from transformers import AutoTokenizer

from nanovllm_tui.engine.text.detokenizer import IncrementalDetokenizer
from nanovllm_tui.engine.text.prompt_check import check_prompt_text


def ms(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def _build(holder: list[IncrementalDetokenizer], tok, stops: list[str]) -> None:
    holder.append(IncrementalDetokenizer(tok, stops))


def _stream(d: IncrementalDetokenizer, ids: list[int]) -> None:
    for t in ids:
        d.add_tokens([t])
        d.take_delta()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model dir with a tokenizer (default: the demo model)")
    ap.add_argument("--tokens", type=int, default=300, help="tokens streamed per stop-string case")
    args = ap.parse_args()
    if args.model is None:
        from nanovllm_tui.engine.demo_model import ensure_demo_model

        args.model = str(ensure_demo_model())
    tok = AutoTokenizer.from_pretrained(args.model)
    rng = random.Random(0)

    mb = "hello world " * 87382
    print("| 1 MB prompt (max_model_len=4096) | ms |")
    print("|---|---|")
    print(
        f"| tokenizer.encode (what rejection used to cost) | {ms(lambda: tok.encode(mb, add_special_tokens=False)):.0f} |"
    )

    def reject() -> None:
        try:
            check_prompt_text(mb, 4096, tok)
        except ValueError:
            return
        raise AssertionError("a 1 MB prompt must not fit 4096 tokens")

    print(f"| check_prompt_text rejection | {ms(reject):.1f} |")

    ids = [rng.randrange(200, 40000) for _ in range(args.tokens)]
    print(f"\n| stop strings (never matching) | build ms | ms per token ({args.tokens} tokens) |")
    print("|---|---|---|")
    for count, length in ((0, 0), (10, 8), (5000, 12), (5000, 1024)):
        stops = ["\u2603" + "".join(rng.choice("abcdefghij") for _ in range(max(0, length - 1))) for _ in range(count)]
        holder: list[IncrementalDetokenizer] = []
        build = ms(partial(_build, holder, tok, stops))
        per_token = ms(partial(_stream, holder[0], ids)) / len(ids)
        print(f"| {count} x {length} chars | {build:.1f} | {per_token:.3f} |")


if __name__ == "__main__":
    main()
