"""The engine flags of `nanovllm-tui`, `nanovllm-tui bench` and `nanovllm-tui serve`: one argument group with one
set of defaults and its mapping to LLM(...) keywords (the model checks are in app/model_args.py).

Numeric flags are checked by argparse itself (one line, exit 2) so a bad command line never loads a model.
Imports no torch at module level: building the parser must stay fast.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import Any, NoReturn

POLICIES = ("mixed", "prefill_first")
# The flag that sets each LLM(...) keyword: engine errors name the keyword (`num_kvcache_blocks=`), a CLI the flag.
_SAME_NAME = "model device dtype max_model_len num_kvcache_blocks kv_cache_memory gpu_memory_utilization max_num_seqs"
_SAME_NAME += " max_num_batched_tokens mixed_prefill_tokens tensor_parallel_size attention_backend"
FLAG_OF = {k: "--" + k.replace("_", "-") for k in _SAME_NAME.split()}
FLAG_OF |= {"kvcache_block_size": "--block-size", "scheduling_policy": "--policy"}
_API_ARG = re.compile(rf"\b({'|'.join(FLAG_OF)})=(?:'([^']*)'|\"([^\"]*)\"|([^\s,;)]*))")


class CliError(ValueError):
    """A problem the user fixes by changing the command line; printed as one line, exit status 2."""


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (the CLIs' error contract)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def cli_message(message: str) -> str:
    """An engine error as a CLI shows it: each API argument `name=value` becomes its flag `--flag value`."""
    return _API_ARG.sub(lambda m: " ".join(filter(None, (FLAG_OF[m[1]], m[2] or m[3] or m[4]))), message)


def parse_size(text: str) -> int:
    """Bytes from "1073741824", "512M", "2G" or "1.5GiB"."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    s = text.strip().lower().removesuffix("ib").removesuffix("b")
    try:
        value = int(float(s[:-1]) * units[s[-1]]) if s and s[-1] in units else int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; write bytes or e.g. 512M, 2G") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive size, e.g. 512M or 2G")
    return value


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= low (argparse names the flag in its one-line error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} must be >= {low}")
        return value

    parse.__name__ = f"int>={low}"
    return parse


def block_size(text: str) -> int:
    """An argparse type: a KV block size, a power of two >= 16 (as the engine's Config requires)."""
    value = int_at_least(16)(text)
    if value & (value - 1):
        raise argparse.ArgumentTypeError(f"{value} must be a power of two >= 16 (e.g. 16, 256)")
    return value


def fraction(text: str) -> float:
    """An argparse type: a float in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{value} must be in (0, 1], e.g. 0.9")
    return value


def policy_list(text: str) -> tuple[str, ...]:
    """An argparse type: one policy or a comma list of them, each once, in order."""
    names = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    if not names or any(p not in POLICIES for p in names):
        raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(POLICIES)} (comma-separated)")
    return names


def _add_cache_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--max-model-len",
        type=int_at_least(1),
        default=4096,
        metavar="N",
        help="longest prompt + answer in tokens (capped by the model's max_position_embeddings)",
    )
    g.add_argument(
        "--block-size",
        type=block_size,
        default=16,
        metavar="N",
        help="tokens per KV cache block (power of two >= 16); small blocks make the block map detailed",
    )
    cache = g.add_mutually_exclusive_group()
    cache.add_argument(
        "--num-kvcache-blocks", type=int_at_least(1), metavar="N", help="size the KV cache by number of blocks"
    )
    cache.add_argument(
        "--kv-cache-memory",
        type=parse_size,
        metavar="BYTES",
        help="size the KV cache by memory, e.g. 512M or 2G (default on CPU: 1G)",
    )
    cache.add_argument(
        "--gpu-memory-utilization",
        type=fraction,
        default=None,
        metavar="F",
        help="on CUDA, fraction of GPU memory the engine may use, KV cache included (default 0.9)",
    )


def _add_scheduler_args(g: argparse._ArgumentGroup, policies: bool) -> None:
    g.add_argument("--max-num-seqs", type=int_at_least(1), default=256, metavar="N", help="most requests in one batch")
    g.add_argument(
        "--max-num-batched-tokens",
        type=int_at_least(1),
        default=8192,
        metavar="N",
        help="token budget of one engine step (prefill chunks + decodes)",
    )
    policy_help = (
        "scheduling policy: mixed = running requests first and chunked prefills (vLLM V1); "
        "prefill_first = new prompts before decodes (nano-vllm)"
    )
    if policies:
        g.add_argument(
            "--policy",
            type=policy_list,
            default=("mixed",),
            metavar="POLICY[,POLICY]",
            help=policy_help + "; a comma list runs the workload once per policy on the same engine",
        )
    else:
        g.add_argument("--policy", choices=POLICIES, default="mixed", help=policy_help)
    g.add_argument(
        "--mixed-prefill-tokens",
        type=int_at_least(0),
        default=None,
        metavar="N",
        help="mixed policy: most prompt tokens in a step that also carries decodes, so a new prompt "
        "delays the running requests' next tokens by a bounded amount (0 = no cap; default: the "
        "streaming service's 384 online, no cap offline)",
    )
    g.add_argument(
        "--no-prefix-caching",
        action="store_true",
        help="turn off prefix caching (blocks of shared prompt prefixes are then recomputed)",
    )


def add_engine_args(parser: argparse.ArgumentParser, *, policies: bool = False) -> None:
    """Add --model and the engine flags. `policies`: --policy takes a comma list (the bench runs each)."""
    g = parser.add_argument_group("engine")
    g.add_argument(
        "--model",
        metavar="DIR",
        help="Hugging Face model directory (config.json, *.safetensors, tokenizer); Qwen3 and Llama "
        "architectures. Without it the offline demo model SmolLM2-135M-Instruct is prepared "
        "(once, into ~/.cache/nanovllm-tui) and used",
    )
    g.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where the model runs; auto picks cuda when a GPU is visible",
    )
    g.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default=None,
        help="weights and KV cache dtype (default: float32 on CPU, the model's bf16/fp16 on GPU)",
    )
    _add_cache_args(g)
    _add_scheduler_args(g, policies)
    g.add_argument(
        "--enforce-eager", action="store_true", help="no CUDA graphs (slower decode on GPU; no effect on CPU)"
    )
    g.add_argument(
        "--tensor-parallel-size", type=int_at_least(1), default=1, metavar="N", help="split the model over N GPUs"
    )
    g.add_argument(
        "--attention-backend",
        choices=("auto", "torch", "triton", "flash-attn"),
        default="auto",
        help="attention kernels: auto = flash-attn or Triton on CUDA, the torch reference on CPU",
    )
    g.add_argument(
        "--torch-threads",
        "--cpu-threads",
        dest="torch_threads",
        type=int_at_least(1),
        default=None,
        metavar="N",
        help="torch intra-op threads of the engine (default: torch's own default, i.e. OMP_NUM_THREADS "
        "or the physical cores, minus one, at least 1: one core is left for the UI or the load driver)",
    )


def engine_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """LLM(...) keyword arguments from the parsed flags (unset optional ones left to the engine's defaults)."""
    policy = args.policy if isinstance(args.policy, str) else args.policy[0]
    kwargs: dict[str, Any] = dict(
        device=args.device,
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        kvcache_block_size=args.block_size,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        scheduling_policy=policy,
        enable_prefix_caching=not args.no_prefix_caching,
        enforce_eager=args.enforce_eager,
        tensor_parallel_size=args.tensor_parallel_size,
        attention_backend=args.attention_backend,
    )
    for name in ("num_kvcache_blocks", "kv_cache_memory", "gpu_memory_utilization", "mixed_prefill_tokens"):
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
    return kwargs


def default_torch_threads() -> int:
    """The engine's torch threads unless told otherwise: torch's default less one core (UI or load driver)."""
    import torch

    return max(1, torch.get_num_threads() - 1)


def torch_threads(args: argparse.Namespace) -> int:
    """--torch-threads, or the default."""
    return int(args.torch_threads or default_torch_threads())


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr (no usage block), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")
