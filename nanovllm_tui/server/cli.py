"""`nanovllm-tui serve`: the engine behind an OpenAI-compatible HTTP API with vLLM's Prometheus metrics.

Order of events: flags and the model dir are checked; the HTTP server starts (it prints "listening on URL" and
answers 503 while the engine loads); the engine service starts (in its own process unless --engine-thread); then
"engine ready". On a terminal the watch view shows the engine's dashboard and the requests; with --headless, or
when stdout is not a terminal, each finished request is one log line. Ctrl+C or SIGTERM stop everything.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nanovllm_tui.app.engine_args import (
    CliError,
    OneLineParser,
    add_engine_args,
    cli_message,
    engine_kwargs,
    one_line,
    torch_threads,
)
from nanovllm_tui.app.model_args import resolve_model_dir

if TYPE_CHECKING:
    from nanovllm_tui.engine.serving.protocol import EngineInfo, Service
    from nanovllm_tui.server.background import BackgroundServer
    from nanovllm_tui.server.state import ServerState

EXIT_USAGE, EXIT_INTERRUPTED = 2, 130
PROG = "nanovllm-tui serve"


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} must be in 0..65535 (0 picks a free port)")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog=PROG,
        description="Serve the engine over OpenAI's HTTP API (/v1/chat/completions, /v1/completions, /v1/models) "
        "with /health and vLLM's Prometheus /metrics, and watch it work.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_engine_args(p)
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for every interface)")
    g.add_argument("--port", type=port_number, default=8000, help="port to listen on (0 picks a free one)")
    g.add_argument("--api-key", metavar="KEY", default=None, help="require 'Authorization: Bearer KEY' on /v1 requests")
    g.add_argument(
        "--served-model-name",
        metavar="NAME",
        default=None,
        help="the model name clients send (None: the model dir's name)",
    )
    g.add_argument(
        "--headless",
        action="store_true",
        help="no watch view: one log line per finished request (the default when stdout is not a terminal)",
    )
    g.add_argument("--engine-thread", action="store_true", help="run the engine on a thread of this process")
    g.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
    return p


def check_capacity(info: EngineInfo) -> None:
    """The KV cache must hold one max-length request, or a long request could never run."""
    capacity = info.num_blocks * info.block_size
    if capacity < info.max_model_len:
        raise CliError(
            f"the KV cache holds {capacity} tokens ({info.num_blocks} blocks of {info.block_size}) but "
            f"--max-model-len is {info.max_model_len}; raise --num-kvcache-blocks / --kv-cache-memory or lower "
            "--max-model-len"
        )


def make_service(args: argparse.Namespace, model_dir: str) -> Service:
    """The engine service (its own process unless --engine-thread), its KV cache checked."""
    if args.engine_thread:
        import torch

        from nanovllm_tui.engine.serving.thread_service import EngineService

        torch.set_num_threads(torch_threads(args))
        service: Service = EngineService(model_dir, **engine_kwargs(args))
    else:
        from nanovllm_tui.engine.serving.process_service import ProcessEngineService

        service = ProcessEngineService(
            model_dir, torch_threads=torch_threads(args), quiet=not args.debug, **engine_kwargs(args)
        )
    try:
        check_capacity(service.engine_info())
    except BaseException:
        service.shutdown()
        raise
    return service


def say(message: str) -> None:
    print(f"{PROG}: {message}", flush=True)


def _on_sigterm(signum: int, frame: Any) -> None:
    # SIGTERM ends the server the way Ctrl+C does: a KeyboardInterrupt while loading or headless, and a clean
    # cancellation of the Textual app (which restores the terminal) in the watch view.
    signal.raise_signal(signal.SIGINT)


def _listen(args: argparse.Namespace, state: ServerState) -> BackgroundServer:
    from nanovllm_tui.server.api import create_app
    from nanovllm_tui.server.background import BackgroundServer

    try:
        server = BackgroundServer(create_app(state), args.host, args.port)
    except OSError as exc:
        raise CliError(
            f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc}); pick another --port"
        ) from None
    server.start()
    say(f"listening on {server.url} (model {state.served_model_name!r})")
    return server


def _serve(args: argparse.Namespace, model_dir: str, state: ServerState, server: BackgroundServer) -> int:
    """Start the engine, attach it, then watch (or log) until interrupted; returns the exit status."""
    say(f"loading {model_dir} …")
    try:
        service = make_service(args, model_dir)
    except (ValueError, TypeError) as exc:  # CliError and ModelLoadError are ValueErrors; messages name the fix
        state.fail(one_line(exc))
        raise CliError(cli_message(one_line(exc))) from None
    try:
        state.attach(service)
        info = service.engine_info()
        say(
            f"engine ready: {info.device} {info.dtype}, {info.num_blocks} KV blocks of {info.block_size}, "
            f"max_model_len {info.max_model_len}; serving on {server.url}"
        )
        try:
            if args.headless or not (sys.stdout.isatty() and sys.stdin.isatty()):
                return _run_headless(state)
            from nanovllm_tui.server.watch import run_watch

            run_watch(state, service, server.url)
        except KeyboardInterrupt:  # Ctrl+C or SIGTERM once serving: a normal stop
            pass
        say("stopping")
        return 0
    finally:
        state.detach()
        server.server.should_exit = True  # stop taking requests while the engine shuts down
        service.shutdown()


def _run_headless(state: ServerState) -> int:
    """One line per finished request until Ctrl+C / SIGTERM; status 1 if the engine dies."""
    state.tracker.on_finish(lambda record: print(record.log_line(), flush=True))
    never = threading.Event()  # Event.wait, unlike a bare sleep loop, wakes for Ctrl+C at once on every platform
    while not never.wait(0.5):
        if state.status == "dead":
            service = state.service
            reason = service.fatal_error if service is not None else state.start_error
            print(f"{PROG}: error: the engine stopped ({reason or 'unknown'}); exiting", file=sys.stderr, flush=True)
            return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    if threading.current_thread() is threading.main_thread():
        # A shell starts a background job with SIGINT ignored; SIGTERM works by raising SIGINT, so take it back.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _on_sigterm)
    server: BackgroundServer | None = None
    try:
        from nanovllm_tui.server.state import ServerState

        model_dir = resolve_model_dir(args)
        state = ServerState(args.served_model_name or Path(model_dir).name, args.api_key)
        server = _listen(args, state)
        return _serve(args, model_dir, state, server)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted, stopped", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except (CliError, ValueError) as exc:
        if args.debug:
            raise
        print(f"{PROG}: error: {one_line(exc)}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except Exception as exc:
        if args.debug:
            raise
        print(f"{PROG}: error: {cli_message(one_line(exc))} (--debug shows the traceback)", file=sys.stderr, flush=True)
        return 1
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
