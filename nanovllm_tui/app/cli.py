"""`nanovllm-tui`: parse engine options, check the model before any UI, start the engine service, run the app.

The engine runs in its own process by default (engine.process_service); --engine-thread keeps it on a thread.
Every problem the user can fix is one line on stderr and exit status 2; nothing loads before the flags and the
model dir passed their cheap checks.

`nanovllm-tui bench ...` hands its arguments to nanovllm_tui.bench.main (the headless benchmark).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nanovllm_tui import __version__
from nanovllm_tui.app.engine_args import (
    CliError,
    OneLineParser,
    add_engine_args,
    cli_message,
    engine_kwargs,
    one_line,
    torch_threads,
)
from nanovllm_tui.app.history.paths import add_history_args
from nanovllm_tui.app.model_args import check_model_dir, resolve_model_dir
from nanovllm_tui.bench.phases import PhasePrinter

if TYPE_CHECKING:
    from nanovllm_tui.engine.serving.protocol import EngineInfo, Service

__all__ = ["CliError", "build_parser", "engine_kwargs", "main"]

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="nanovllm-tui",
        description="Chat with a local model in several sessions at once and watch the engine batch them: "
        "KV blocks, prefix-cache hits, preemptions and per-step batches, live. "
        "`nanovllm-tui bench --help` runs the headless benchmark instead.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"nanovllm-tui {__version__}")
    add_engine_args(p)
    add_history_args(p)  # --history PATH, --no-history, --reopen N
    p.add_argument(
        "--engine-thread",
        action="store_true",
        help="run the engine on a thread of the app's process instead of in its own process (the "
        "default: a subprocess, so the UI never competes with the engine for the interpreter lock)",
    )
    p.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
    return p


def say_error(line: str) -> None:
    """One error line on stderr; nothing if stderr is gone (a closed pipe): the exit status still tells."""
    try:
        print(line, file=sys.stderr, flush=True)
    except OSError:
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())  # no second failure at exit's flush


def check_terminal() -> None:
    """The app reads keys from stdin and draws on stderr (Textual's output), and stdout carries start-up lines:
    refuse at once unless all three are a terminal (a UI drawn into a pipe nobody reads would hang)."""
    if not (sys.stdin.isatty() and sys.stdout.isatty() and sys.stderr.isatty()):
        raise CliError(
            "the app needs a terminal (stdin, stdout and stderr must be a TTY); "
            "for a headless run use `nanovllm-tui serve --headless` or `nanovllm-tui bench`"
        )


def check_capacity(info: EngineInfo) -> None:
    """The KV cache must hold one max-length request."""
    capacity = info.num_blocks * info.block_size
    if capacity < info.max_model_len:
        raise CliError(
            f"the KV cache holds {capacity} tokens ({info.num_blocks} blocks of "
            f"{info.block_size}) but --max-model-len is {info.max_model_len}; "
            "raise --num-kvcache-blocks / --kv-cache-memory / --gpu-memory-utilization "
            "or lower --max-model-len"
        )


def _make_service(args: argparse.Namespace, model_dir: str, progress: PhasePrinter) -> Service:
    """The engine service: in its own process unless --engine-thread. Engine start-up errors become CliError,
    their API argument names (num_kvcache_blocks=) turned into our flags (--num-kvcache-blocks)."""
    try:
        if args.engine_thread:
            import torch

            from nanovllm_tui.engine.serving.thread_service import EngineService

            torch.set_num_threads(torch_threads(args))
            return EngineService(model_dir, progress=progress, **engine_kwargs(args))
        from nanovllm_tui.engine.serving.process_service import ProcessEngineService

        # The engine process re-raises its start-up errors here with the same type and message; it gets a copy
        # of `progress` and draws its load phases on our terminal (it goes quiet only once it is ready).
        return ProcessEngineService(
            model_dir, torch_threads=torch_threads(args), quiet=not args.debug, progress=progress, **engine_kwargs(args)
        )
    except (ValueError, TypeError) as exc:  # ModelLoadError is a ValueError; messages name the fix
        raise CliError(cli_message(one_line(exc))) from None


def start_service(args: argparse.Namespace) -> tuple[Service, str]:
    """The engine service the app talks to (its KV cache checked), and the model's name. Each start-up phase
    (the demo model's, the engine's load and CUDA graphs) ends with a line on stdout, drawn live meanwhile."""
    # stdout: stderr carries only the error line. A phase that fails leaves its live line erased, not half drawn.
    with PhasePrinter("stdout", prefix="demo model ") as demo:
        model_dir = resolve_model_dir(args, demo)
    print(f"loading {model_dir} …", flush=True)
    start = time.monotonic()
    with PhasePrinter("stdout") as engine:
        service = _make_service(args, model_dir, engine)
    print(f"engine ready in {time.monotonic() - start:.1f} s", flush=True)
    try:
        check_capacity(service.engine_info())
    except BaseException:
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
        print(f"nanovllm-tui bench is not available in this install ({one_line(exc)})", file=sys.stderr)
        return EXIT_USAGE
    return int(entry(argv) or 0)


def _on_sigterm(signum: int, frame: Any) -> None:
    # SIGTERM ends the app the way Ctrl+C does (Textual restores the terminal, the service shuts down) instead
    # of killing the process mid-frame with the terminal left in raw mode on the alternate screen. Re-raised
    # as SIGINT: asyncio's runner (under Textual) turns it into a clean cancellation, and while loading it is
    # a KeyboardInterrupt that main() turns into a quiet exit.
    signal.raise_signal(signal.SIGINT)


def _run_app(service: Service, model_name: str, args: argparse.Namespace) -> None:
    import dataclasses

    from nanovllm_tui.app.app import NanoVllmApp
    from nanovllm_tui.app.history.chat_history import ChatHistory
    from nanovllm_tui.app.history.paths import resolve
    from nanovllm_tui.app.session import settings_for_model

    info = service.engine_info()  # info.model is the model dir; the header shows its name
    header = dataclasses.replace(info, model=model_name)
    history = ChatHistory.open(resolve(args.history, args.no_history))  # never raises: off, with a reason
    defaults = settings_for_model(info.model)  # the model's generation_config.json sampling, else ours
    NanoVllmApp(
        service, header, owns_service=True, history=history, reopen=args.reopen, default_settings=defaults
    ).run()


def _start(args: argparse.Namespace) -> tuple[Service, str] | int:
    """Checks, then the service; an exit status instead when something the user can fix is wrong."""
    try:
        if args.model is not None:
            check_model_dir(os.path.expanduser(args.model))
        check_terminal()
        return start_service(args)
    except CliError as exc:
        if args.debug:
            raise
        say_error(f"nanovllm-tui: error: {exc}")
        return EXIT_USAGE
    except Exception as exc:  # anything else while loading: one line unless --debug
        if args.debug:
            raise
        say_error(
            f"nanovllm-tui: error: loading the model failed: {cli_message(one_line(exc))} (--debug shows the traceback)"
        )
        return 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        return run_bench(argv[1:])
    if argv and argv[0] == "serve":
        from nanovllm_tui.server.cli import main as serve_main

        return serve_main(argv[1:])
    if argv and argv[0] == "history":
        from nanovllm_tui.app.history_cli import main as history_main

        return history_main(argv[1:])
    if argv and argv[0] == "attach":
        from nanovllm_tui.remote.cli import main as attach_main

        return attach_main(argv[1:])
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    signal.signal(signal.SIGTERM, _on_sigterm)
    service: Service | None = None
    try:
        started = _start(args)
        if isinstance(started, int):
            return started
        service, model_name = started
        _run_app(service, model_name, args)
    except KeyboardInterrupt:  # Ctrl+C or SIGTERM before the app took the terminal
        print("nanovllm-tui: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if service is not None:
            service.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
