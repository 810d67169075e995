"""Command-line arguments of `nanovllm-tui bench`: model source, engine options (as the app has), workload, outputs."""

from __future__ import annotations

import argparse
import math
from typing import Any

from nanovllm_tui.bench import workload as wl

POLICIES = ("mixed", "prefill_first")

ENGINE_FLAGS = {  # dest -> LLM(...) keyword
    "device": "device",
    "dtype": "dtype",
    "block_size": "kvcache_block_size",
    "num_kvcache_blocks": "num_kvcache_blocks",
    "kv_cache_memory": "kv_cache_memory",
    "gpu_memory_utilization": "gpu_memory_utilization",
    "max_num_seqs": "max_num_seqs",
    "max_num_batched_tokens": "max_num_batched_tokens",
    "max_model_len": "max_model_len",
    "policy": "scheduling_policy",
    "mixed_prefill_tokens": "mixed_prefill_tokens",
    "enforce_eager": "enforce_eager",
    "tensor_parallel_size": "tensor_parallel_size",
    "attention_backend": "attention_backend",
}


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


def _policies(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))  # each once, in order
    bad = [p for p in names if p not in POLICIES]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"--policy {text!r}: choose from {', '.join(POLICIES)} (comma-separated)")
    return names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nanovllm-tui bench",
        description="Offline or online throughput/latency benchmark, optionally side by side with transformers, "
        "against the hardware floor. Default workload = nano-vllm's bench.py.",
    )
    p.add_argument(
        "mode",
        nargs="?",
        choices=("offline", "online"),
        default="offline",
        help="offline: all requests at once (throughput); online: Poisson arrivals through EngineService",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="Hugging Face model dir (config.json + safetensors)")
    src.add_argument("--config", help="config.json of an architecture: benchmark it with random weights")
    p.add_argument("--cache-dir", help="where --config models are built (default $NANOVLLM_TUI_CACHE/bench-models)")

    e = p.add_argument_group("engine (as the app)")
    e.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    e.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: bf16 on GPU, fp32 on CPU)")
    e.add_argument("--block-size", type=int, default=256, help="KV cache block size in tokens (default 256)")
    e.add_argument("--num-kvcache-blocks", type=int, default=None, help="KV cache size in blocks")
    e.add_argument("--kv-cache-memory", type=int, default=None, help="KV cache size in bytes (CPU default 1 GiB)")
    e.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="fraction of GPU memory (default 0.9)")
    e.add_argument("--max-num-seqs", type=int, default=256, help="max sequences per step (default 256)")
    e.add_argument("--max-num-batched-tokens", type=int, default=8192, help="token budget per step (default 8192)")
    e.add_argument("--max-model-len", type=int, default=4096, help="max prompt + output tokens (default 4096)")
    e.add_argument(
        "--policy",
        type=_policies,
        default=("mixed",),
        metavar="POLICY[,POLICY]",
        help="scheduling policy: mixed | prefill_first; online mode takes a comma list and runs the "
        "workload once per policy on the same engine (default mixed)",
    )
    e.add_argument(
        "--mixed-prefill-tokens",
        type=int,
        default=None,
        metavar="N",
        help="mixed policy: most prompt tokens in a step that also carries decodes (bounds the "
        "inter-token latency spike of a new prompt; 0 = no cap; default: none offline, 384 "
        "online, as the engine and the streaming service)",
    )
    e.add_argument("--no-prefix-caching", action="store_true", help="disable the prefix cache")
    e.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs")
    e.add_argument("--tensor-parallel-size", type=int, default=1, help="GPUs to shard the model over (default 1)")
    e.add_argument("--attention-backend", default="auto", help="auto | torch | triton | flash-attn")

    w = p.add_argument_group("workload (defaults = nano-vllm bench.py)")
    w.add_argument("--num-requests", type=int, default=wl.DEFAULT_NUM_REQUESTS, help="default 256")
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
    w.add_argument("--max-token-id", type=int, default=wl.DEFAULT_MAX_TOKEN_ID, help="prompt ids in [0, N] (10000)")
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
        type=int,
        default=None,
        help="online: at most N requests in flight; an arrival waits for a slot (as vLLM's)",
    )
    w.add_argument("--no-warmup", action="store_true", help="skip the warm-up request")

    c = p.add_argument_group("comparison and floor")
    c.add_argument(
        "--compare",
        action="append",
        default=[],
        choices=("transformers", "transformers-static"),
        help="also run transformers on the same workload in this process (repeatable)",
    )
    c.add_argument("--hf-batch-size", type=int, default=64, help="transformers-static: padded batch size (64)")
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

    o = p.add_argument_group("output")
    o.add_argument("--json", dest="json_path", metavar="FILE", help="write all results as JSON")
    o.add_argument("--trace", metavar="FILE", help="write the engine's StepStats as JSONL, one step a line")
    o.add_argument(
        "--cpu-threads",
        type=int,
        default=None,
        help="torch intra-op threads on CPU (default: torch's; 1 is steadier on a busy machine)",
    )
    o.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def engine_kwargs(ns: argparse.Namespace) -> dict[str, Any]:
    """LLM(...) keyword arguments from parsed flags (unset optional ones left to the engine's defaults)."""
    kwargs = {kw: getattr(ns, dest) for dest, kw in ENGINE_FLAGS.items() if getattr(ns, dest) is not None}
    kwargs["scheduling_policy"] = ns.policy[0]
    if ns.mode == "online":  # through the streaming service: its defaults, which `LLM(...)` alone lacks
        from nanovllm_tui.engine.config import with_serving_defaults

        kwargs = with_serving_defaults(kwargs)
    kwargs["enable_prefix_caching"] = not ns.no_prefix_caching
    return kwargs
