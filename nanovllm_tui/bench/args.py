"""Command-line arguments of `nanovllm-tui bench`: model source and engine flags (the app's, with its defaults:
app/engine_args.py), workload, comparison, outputs."""

from __future__ import annotations

import argparse
import math
from typing import Any

from nanovllm_tui.app.engine_args import OneLineParser, add_engine_args, int_at_least
from nanovllm_tui.app.engine_args import engine_kwargs as shared_engine_kwargs
from nanovllm_tui.bench import workload as wl


def _range(text: str) -> tuple[int, int]:
    """'100,1024' or '512' (both ends) -> (low, high)."""
    try:
        parts = [int(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not LOW,HIGH or N (integers)") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or parts[0] < 1 or parts[1] < parts[0]:
        raise argparse.ArgumentTypeError(f"{text!r} must be LOW,HIGH with 1 <= LOW <= HIGH, or one N >= 1")
    return parts[0], parts[1]


def _rate(text: str) -> float:
    value = math.inf if text.lower() in ("inf", "infinity") else float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"--request-rate {text!r} must be > 0 requests/s or inf")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="nanovllm-tui bench",
        description="Offline or online throughput/latency benchmark, optionally side by side with transformers, "
        "against the hardware floor. Default workload = nano-vllm's bench.py.",
    )
    p.add_argument(
        "mode",
        nargs="?",
        choices=("offline", "online", "serve"),
        default="offline",
        help="offline: all requests at once (throughput); online: Poisson arrivals through the streaming service; "
        "serve: the online workload against an OpenAI-compatible server at --url (ours or vLLM)",
    )
    add_engine_args(p, policies=True)
    p.add_argument(
        "--config",
        metavar="JSON",
        help="instead of --model: the config.json of an architecture, benchmarked with random weights",
    )
    p.add_argument("--cache-dir", help="where --config models are built (default $NANOVLLM_TUI_CACHE/bench-models)")
    _add_server_args(p)
    _add_workload_args(p)
    _add_compare_args(p)
    o = p.add_argument_group("output")
    o.add_argument("--json", dest="json_path", metavar="FILE", help="write all results as JSON")
    o.add_argument("--trace", metavar="FILE", help="write the engine's StepStats as JSONL, one step a line")
    o.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _add_server_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "bench serve (the engine flags are the server's business; --model NAME picks a served model, "
        "default: the one /v1/models lists)"
    )
    g.add_argument("--url", metavar="URL", help="the server's base URL, e.g. http://127.0.0.1:8000")
    g.add_argument("--api-key", metavar="KEY", default=None, help="sent as 'Authorization: Bearer KEY'")


def _add_workload_args(p: argparse.ArgumentParser) -> None:
    w = p.add_argument_group("workload (defaults = nano-vllm bench.py)")
    w.add_argument("--num-requests", type=int_at_least(1), default=wl.DEFAULT_NUM_REQUESTS, help="default 256")
    w.add_argument(
        "--prompt-len",
        type=_range,
        default=wl.DEFAULT_PROMPT_LEN_RANGE,
        metavar="LO,HI",
        help="prompt lengths, uniform (default 100,1024)",
    )
    w.add_argument(
        "--output-len",
        type=_range,
        default=wl.DEFAULT_OUTPUT_LEN_RANGE,
        metavar="LO,HI",
        help="max_tokens, uniform (default 100,1024)",
    )
    w.add_argument(
        "--max-token-id", type=int_at_least(0), default=wl.DEFAULT_MAX_TOKEN_ID, help="prompt ids in [0, N] (10000)"
    )
    w.add_argument("--seed", type=int, default=wl.DEFAULT_SEED, help="workload seed (default 0)")
    w.add_argument(
        "--temperature",
        type=float,
        default=wl.DEFAULT_TEMPERATURE,
        help="sampling temperature (default 0.6 as nano-vllm; 0 = greedy)",
    )
    w.add_argument(
        "--request-rate",
        type=_rate,
        default=math.inf,
        help="online: Poisson arrival rate in requests/s (default inf = all at once)",
    )
    w.add_argument(
        "--max-concurrency",
        type=int_at_least(1),
        default=None,
        help="online: at most N requests in flight; an arrival waits for a slot (as vLLM's)",
    )
    w.add_argument("--no-warmup", action="store_true", help="skip the warm-up request")


def _add_compare_args(p: argparse.ArgumentParser) -> None:
    c = p.add_argument_group("comparison and floor")
    c.add_argument(
        "--compare",
        action="append",
        default=[],
        choices=("transformers", "transformers-static"),
        help="also run transformers on the same workload in this process (repeatable)",
    )
    c.add_argument(
        "--hf-batch-size", type=int_at_least(1), default=64, help="transformers-static: padded batch size (64)"
    )
    c.add_argument(
        "--bandwidth",
        type=float,
        default=None,
        help="memory bandwidth in GB/s for the floor (default: measured by a device-to-device copy)",
    )
    c.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="peak compute in TFLOPS for the floor (default: measured by a large matmul)",
    )
    c.add_argument("--no-floor", action="store_true", help="skip the floor (and its measurements)")


def engine_kwargs(ns: argparse.Namespace) -> dict[str, Any]:
    """LLM(...) keyword arguments: the app's, plus the streaming service's defaults in online mode."""
    kwargs = shared_engine_kwargs(ns)
    if ns.mode == "online":  # through the streaming service: its defaults, which `LLM(...)` alone lacks
        from nanovllm_tui.engine.config import with_serving_defaults

        kwargs = with_serving_defaults(kwargs)
    return kwargs
