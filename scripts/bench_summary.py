"""Markdown tables for benchmarks/RESULTS.md from `nanovllm-tui bench --json` files.

Usage: python3 scripts/bench_summary.py OUT/*.json
"""

from __future__ import annotations

import json
import sys


def _f(x, fmt: str = ",.0f") -> str:
    return "-" if x is None else format(x, fmt)


def summarize(path: str) -> list[str]:
    with open(path) as f:
        doc = json.load(f)
    env = doc["environment"]
    where = f"{env.get('gpu') or env['device']}, commit {(env.get('commit') or '?')[:9]}, {env['date'][:10]}"
    cmd = "nanovllm-tui bench " + " ".join(doc["argv"])
    lines = [f"### {path.rsplit('/', 1)[-1]} ({where})", "", f"`{cmd}`", ""]
    if "offline" in doc:
        lines += [
            "| engine | output tokens | seconds | output tok/s | vs ours | per-request decode tok/s |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        ours = doc["offline"]["nanovllm-tui"]["output_tok_s"]
        for name, r in doc["offline"].items():
            lines.append(
                f"| {name} | {r['output_tokens']:,} | {r['seconds']:.2f} | {r['output_tok_s']:,.0f} | "
                f"{r['output_tok_s'] / ours:.3f} | {_f(r.get('decode_tok_s_per_request_p50'))} |"
            )
        if "floor" in doc:
            fl = doc["floor"]
            lines += [
                "",
                (
                    f"Floor: memory {fl['memory_floor_tok_s']:,.0f} tok/s at {fl['bandwidth_gbs']:,.0f} GB/s "
                    f"({fl['bandwidth_source']}), achieved {fl['memory_fraction']:.3g}; compute "
                    f"{fl['compute_floor_tok_s']:,.0f} tok/s at {fl['peak_tflops']:.4g} TFLOPS ({fl['peak_source']}), "
                    f"achieved {fl['compute_fraction']:.3g}."
                ),
            ]
    if "online" in doc:
        lines += [
            (
                "| policy | rate req/s | max in flight | mean in flight | out tok/s | TTFT p50/p99 ms | "
                "ITL p50/p90/p99 ms | ITL p99/p50 | E2E p50/p99 s |"
            ),
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for policy, r in doc["online"].items():
            itl, ttft, e2e = r["itl"], r["ttft"], r["e2e"]
            ratio = itl["p99"] / itl["p50"] if itl["p50"] else None
            lines.append(
                f"| {policy} | {_f(r['request_rate'], '.2f') if r['request_rate'] else 'inf'} | "
                f"{r.get('max_concurrency') or '-'} | {r['mean_in_flight']:.1f} | {r['output_tok_s']:,.0f} | "
                f"{_f(ttft['p50'], '.1f')} / {_f(ttft['p99'], '.1f')} | {_f(itl['p50'], '.2f')} / "
                f"{_f(itl['p90'], '.2f')} / {_f(itl['p99'], '.2f')} | {_f(ratio, '.2f')} | "
                f"{_f(e2e['p50'] / 1e3 if e2e['p50'] else None, '.2f')} / "
                f"{_f(e2e['p99'] / 1e3 if e2e['p99'] else None, '.2f')} |"
            )
    return [*lines, ""]


if __name__ == "__main__":
    for p in sys.argv[1:]:
        try:
            print("\n".join(summarize(p)))
        except (OSError, KeyError, ValueError, ZeroDivisionError) as exc:
            print(f"{p}: cannot summarise ({type(exc).__name__}: {exc})")
