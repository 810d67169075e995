"""`nanovllm-tui`: parse engine options, check the model before any UI, start the engine service, run the app.

The engine runs in its own process by default (engine.process_service); --engine-thread keeps it on a thread.

`nanovllm-tui bench ...` hands its arguments to nanovllm_tui.bench.main (the headless benchmark).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import warnings
from pathlib import Path

from nanovllm_tui import __version__

EXIT_USAGE = 2


class CliError(Exception):
    """A problem the user fixes by changing the command line; printed as one line, exit status 2."""


def _size(text: str) -> int:
    """Bytes from "1073741824", "512M", "2G" or "1.5GiB"."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    s = text.strip().lower().removesuffix("ib").removesuffix("b")
    try:
        if s and s[-1] in units:
            return int(float(s[:-1]) * units[s[-1]])
        return int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; write bytes or e.g. 512M, 2G") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nanovllm-tui",
        description="Chat with a local model in several sessions at once and watch the engine batch them: "
        "KV blocks, prefix-cache hits, preemptions and per-step batches, live. "
        "`nanovllm-tui bench --help` runs the headless benchmark instead.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"nanovllm-tui {__version__}")
    p.add_argument(
        "--model",
        metavar="DIR",
        help="Hugging Face model directory (config.json, *.safetensors, tokenizer); Qwen3 and Llama "
        "architectures. Without it the offline demo model SmolLM2-135M-Instruct is prepared "
        "(once, into ~/.cache/nanovllm-tui) and used",
    )
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where the model runs; auto picks cuda when a GPU is visible",
    )
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default=None,
        help="weights and KV cache dtype (default: float32 on CPU, the model's bf16/fp16 on GPU)",
    )
    p.add_argument(
        "--max-model-len",
        type=int,
        default=4096,
        metavar="N",
        help="longest prompt + answer in tokens (capped by the model's max_position_embeddings)",
    )
    p.add_argument(
        "--block-size",
        type=int,
        default=16,
        metavar="N",
        help="tokens per KV cache block (power of two >= 16); small blocks make the block map detailed",
    )
    cache = p.add_mutually_exclusive_group()
    cache.add_argument("--num-kvcache-blocks", type=int, metavar="N", help="size the KV cache by number of blocks")
    cache.add_argument(
        "--kv-cache-memory",
        type=_size,
        metavar="BYTES",
        help="size the KV cache by memory, e.g. 512M or 2G (default on CPU: 1G)",
    )
    cache.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=None,
        metavar="F",
        help="on CUDA, fraction of GPU memory the engine may use, KV cache included (default 0.9)",
    )
    p.add_argument("--max-num-seqs", type=int, default=256, metavar="N", help="most requests in one batch")
    p.add_argument(
        "--max-num-batched-tokens",
        type=int,
        default=8192,
        metavar="N",
        help="token budget of one engine step (prefill chunks + decodes)",
    )
    p.add_argument(
        "--policy",
        choices=("mixed", "prefill_first"),
        default="mixed",
        help="scheduling policy: mixed = running requests first and chunked prefills (vLLM V1); "
        "prefill_first = new prompts before decodes (nano-vllm). Switchable in the app (f4)",
    )
    p.add_argument(
        "--mixed-prefill-tokens",
        type=int,
        default=None,
        metavar="N",
        help="mixed policy: most prompt tokens in a step that also carries decodes, so a new prompt "
        "delays the other sessions' next tokens by a bounded amount (0 = no cap; default: the "
        "streaming service's, 384)",
    )
    p.add_argument(
        "--no-prefix-caching",
        action="store_true",
        help="turn off prefix caching (blocks of shared prompt prefixes are then recomputed)",
    )
    p.add_argument(
        "--enforce-eager", action="store_true", help="no CUDA graphs (slower decode on GPU; no effect on CPU)"
    )
    p.add_argument("--tensor-parallel-size", type=int, default=1, metavar="N", help="split the model over N GPUs")
    p.add_argument(
        "--attention-backend",
        choices=("auto", "torch", "triton", "flash-attn"),
        default="auto",
        help="attention kernels: auto = flash-attn or Triton on CUDA, the torch reference on CPU",
    )
    p.add_argument(
        "--engine-thread",
        action="store_true",
        help="run the engine on a thread of the app's process instead of in its own process (the "
        "default: a subprocess, so the UI never competes with the engine for the interpreter lock)",
    )
    p.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        metavar="N",
        help="torch intra-op threads of the engine (default: torch's own default, i.e. OMP_NUM_THREADS "
        "or the physical cores, minus one, at least 1: one core is left for the UI)",
    )
    p.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
    return p


def default_torch_threads() -> int:
    """The engine's torch threads unless told otherwise: torch's default less the one core the UI needs."""
    import torch

    return max(1, torch.get_num_threads() - 1)


def engine_kwargs(args: argparse.Namespace) -> dict:
    """LLM(...) keyword arguments from the parsed command line."""
    kwargs = dict(
        device=args.device,
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        kvcache_block_size=args.block_size,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        scheduling_policy=args.policy,
        enable_prefix_caching=not args.no_prefix_caching,
        enforce_eager=args.enforce_eager,
        tensor_parallel_size=args.tensor_parallel_size,
        attention_backend=args.attention_backend,
    )
    for name in ("num_kvcache_blocks", "kv_cache_memory", "gpu_memory_utilization", "mixed_prefill_tokens"):
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
    return kwargs


def check_model_dir(path: str) -> None:
    """Cheap checks before loading anything: directory, config.json, architecture, weights, tokenizer."""
    d = Path(path)
    if not d.is_dir():
        raise CliError(f"--model {path}: no such directory; point it at a Hugging Face model directory")
    config = d / "config.json"
    if not config.is_file():
        raise CliError(f"--model {path}: no config.json; point it at a Hugging Face model directory")
    try:
        archs = json.loads(config.read_text()).get("architectures") or []
    except (OSError, ValueError, AttributeError) as exc:
        raise CliError(f"--model {path}: config.json is not valid JSON ({exc}); re-download the model") from None
    supported = ("Qwen3ForCausalLM", "LlamaForCausalLM")
    if not any(a in supported for a in archs):
        raise CliError(
            f"--model {path}: unsupported architecture {archs or 'missing'} in config.json; "
            f"supported: {', '.join(supported)}"
        )
    if not any(d.glob("*.safetensors")):
        raise CliError(f"--model {path}: no *.safetensors weights; save the model with safe_serialization=True")
    if not any((d / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise CliError(
            f"--model {path}: no tokenizer (tokenizer.json, tokenizer.model or vocab.json); "
            "save the tokenizer next to the weights"
        )


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def resolve_model_dir(args: argparse.Namespace) -> str:
    """--model checked cheaply, or the demo model prepared (with progress on stderr)."""
    if args.model is None:
        from nanovllm_tui.engine.demo_model import DemoModelError, ensure_demo_model

        try:
            return str(ensure_demo_model(progress=lambda msg: print(f"demo model: {msg}", file=sys.stderr)))
        except DemoModelError as exc:
            raise CliError(_one_line(exc)) from None
    model_dir = os.path.expanduser(args.model)
    check_model_dir(model_dir)
    return model_dir


def check_capacity(engine) -> None:
    """The KV cache must hold one max-length request (engine: an LLM or the process service's proxy)."""
    num_blocks, cfg = engine.block_manager.num_blocks, engine.config
    capacity = num_blocks * cfg.kvcache_block_size
    if capacity < cfg.max_model_len:
        raise CliError(
            f"the KV cache holds {capacity} tokens ({num_blocks} blocks of "
            f"{cfg.kvcache_block_size}) but --max-model-len is {cfg.max_model_len}; "
            "raise --num-kvcache-blocks / --kv-cache-memory / --gpu-memory-utilization "
            "or lower --max-model-len"
        )


def load_engine(args: argparse.Namespace):
    """Resolve the model dir, build the LLM in this process and check the cache holds one max-length request."""
    model_dir = resolve_model_dir(args)
    print(f"loading {model_dir} …", flush=True)  # stdout: stderr carries only the error line
    import torch

    from nanovllm_tui.engine import LLM

    torch.set_num_threads(args.torch_threads or default_torch_threads())
    try:
        llm = LLM(model_dir, **engine_kwargs(args))
    except (ValueError, TypeError) as exc:  # ModelLoadError is a ValueError; messages name the fix
        raise CliError(_one_line(exc)) from None
    check_capacity(llm)
    return llm, Path(model_dir).name


def start_service(args: argparse.Namespace):
    """The engine service the app talks to, and the model's name: in its own process unless --engine-thread."""
    if args.torch_threads is not None and args.torch_threads < 1:
        raise CliError(f"--torch-threads {args.torch_threads} must be >= 1")
    if args.engine_thread:
        from nanovllm_tui.engine.serving.thread_service import EngineService

        llm, model_name = load_engine(args)
        return EngineService(llm), model_name
    model_dir = resolve_model_dir(args)
    print(f"loading {model_dir} …", flush=True)
    from nanovllm_tui.engine.serving.process_service import ProcessEngineService

    try:  # the engine process re-raises its start-up errors here with the same type and message
        service = ProcessEngineService(
            model_dir,
            torch_threads=args.torch_threads or default_torch_threads(),
            quiet=not args.debug,
            **engine_kwargs(args),
        )
    except (ValueError, TypeError) as exc:
        raise CliError(_one_line(exc)) from None
    try:
        check_capacity(service.engine)
    except CliError:
        service.shutdown()
        raise
    return service, Path(model_dir).name


def _quiet_libraries() -> None:
    """Library warnings would break the one-line error contract and scribble over the UI."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")


def run_bench(argv: list[str]) -> int:
    try:
        from nanovllm_tui import bench

        entry = bench.main
    except (ImportError, AttributeError) as exc:
        print(f"nanovllm-tui bench is not available in this install ({_one_line(exc)})", file=sys.stderr)
        return EXIT_USAGE
    return int(entry(argv) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        return run_bench(argv[1:])
    if argv and argv[0] == "serve":
        from nanovllm_tui.server.cli import main as serve_main

        return serve_main(argv[1:])
    if argv and argv[0] == "attach":
        from nanovllm_tui.remote.cli import main as attach_main

        return attach_main(argv[1:])
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    try:
        service, model_name = start_service(args)
    except CliError as exc:
        if args.debug:
            raise
        print(f"nanovllm-tui: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # anything else while loading: one line unless --debug
        if args.debug:
            raise
        print(
            f"nanovllm-tui: error: loading the model failed: {_one_line(exc)} (--debug shows the traceback)",
            file=sys.stderr,
        )
        return 1
    from nanovllm_tui.app.app import NanoVllmApp
    from nanovllm_tui.app.stats_window import EngineInfo

    # SIGTERM ends the app the way Ctrl+C does (Textual restores the terminal, the service shuts down)
    # instead of killing the process mid-frame with the terminal left in raw mode on the alternate screen.
    # Re-raised as SIGINT, which asyncio's runner (under Textual) turns into a clean cancellation.
    signal.signal(signal.SIGTERM, lambda signum, frame: signal.raise_signal(signal.SIGINT))
    try:
        NanoVllmApp(service, EngineInfo.from_llm(service.engine, model_name), owns_service=True).run()
    finally:
        service.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
