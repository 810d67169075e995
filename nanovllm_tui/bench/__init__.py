"""Benchmarks (`nanovllm-tui bench`): nano-vllm's offline workload and a Poisson online workload, transformers
side by side, and the hardware floor. Importing this package is cheap; `workload` is pure Python (the app's
bench screen uses it) and nothing here imports the UI."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Run `nanovllm-tui bench` with argv (without the leading "bench"); returns the exit status."""
    from nanovllm_tui.bench.cli import main as _main

    return _main(argv)
