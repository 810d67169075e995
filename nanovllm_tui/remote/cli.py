"""`nanovllm-tui attach URL`: open the app (NanoVllmApp: chat tabs, settings, saved chats, dashboard) on a
running vLLM-compatible server, with chats and dashboard over HTTP.

Start-up checks fail with one line on stderr and exit status 2: a bad URL, no terminal, a server that can't be
reached or rejects the key, a model choice that doesn't fit what /v1/models lists. A server with several models
and no --model: on a terminal the user picks one from a numbered list; with --check that is an error too.
`--check` stops after the checks and prints the first figures (for scripts and CI; no terminal UI).
"""

from __future__ import annotations

import argparse
import functools
import signal
import sys
import time
from collections.abc import Sequence
from typing import TextIO

from nanovllm_tui.app.history.paths import add_history_args
from nanovllm_tui.app.text import inert
from nanovllm_tui.remote.client import DEFAULT_STREAM_TIMEOUT, DEFAULT_TIMEOUT, ModelCard, normalize_base_url
from nanovllm_tui.remote.errors import RemoteError
from nanovllm_tui.remote.service import RemoteService
from nanovllm_tui.remote.snapshot import RemoteSnapshot

PROG = "nanovllm-tui attach"
EXIT_INTERRUPTED = 130


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} must be > 0 seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Attach the app to a running vLLM-compatible server: chat over its OpenAI API, "
        "and a dashboard from its Prometheus /metrics.",
    )
    p.add_argument("url", help="the server's base URL, e.g. http://127.0.0.1:8000 (https works too)")
    p.add_argument("--api-key", metavar="KEY", help="sent as 'Authorization: Bearer KEY' (vllm serve --api-key)")
    p.add_argument(
        "--model",
        metavar="NAME",
        help="which served model to chat with (of several: asked on the terminal if left out)",
    )
    p.add_argument("--interval", type=_positive, default=1.0, metavar="S", help="seconds between /metrics polls")
    p.add_argument("--timeout", type=_positive, default=DEFAULT_TIMEOUT, metavar="S", help="seconds per HTTP call")
    p.add_argument(
        "--stream-timeout",
        type=_positive,
        default=DEFAULT_STREAM_TIMEOUT,
        metavar="S",
        help="seconds a chat stream may stay silent before it counts as failed",
    )
    p.add_argument("--check", action="store_true", help="check the server, print its figures once, and exit")
    add_history_args(p)  # --history PATH, --no-history, --reopen N: the same saved chats as the local app
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, check the server, then run the app (or print figures with --check); the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return _attach(args)
    except KeyboardInterrupt:  # Ctrl+C (or SIGTERM) before the app took the terminal, e.g. while connecting
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _attach(args: argparse.Namespace) -> int:
    ask = None
    try:
        url = normalize_base_url(args.url)
        if not args.check:
            _check_terminal()
            ask = functools.partial(ask_model, url=url, stdin=sys.stdin, stdout=sys.stdout)
            # As in the local app: SIGTERM ends the app the way Ctrl+C does (terminal restored, service shut
            # down), re-raised as SIGINT, which asyncio's runner under Textual turns into a clean exit.
            signal.signal(signal.SIGTERM, lambda signum, frame: signal.raise_signal(signal.SIGINT))
        service = RemoteService.connect(
            args.url,
            args.api_key,
            args.model,
            args.interval,
            timeout=args.timeout,
            stream_timeout=args.stream_timeout,
            ask=ask,
        )
    except ValueError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except RemoteError as e:
        print(f"{PROG}: error: cannot attach: {e}", file=sys.stderr)
        return 2
    try:
        if args.check:
            return _check(service, args.interval)
        return _run_app(service, args)
    finally:
        service.shutdown()


def _check(service: RemoteService, interval: float) -> int:
    """Print the model and, after two polls (so rates have an interval), one line of figures."""
    info = service.info()
    print(
        f"attached to {info.url}: model {info.model}"
        + (f" (max_model_len {info.max_model_len})" if info.max_model_len else "")
    )
    try:
        service.poller.poll_once()
        time.sleep(interval)  # rates need two scrapes some time apart
        snap = service.poller.poll_once()
    except RemoteError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    print(describe(snap))
    return 0


def describe(snap: RemoteSnapshot) -> str:
    """One line of figures; 'n/e' marks a figure whose metric the server does not export."""

    def fig(name: str, value: object, fmt: str) -> str:
        if not snap.exported(name):
            return "n/e"
        return "-" if value is None else format(value, fmt)

    ttft = snap.ttft[0] if snap.ttft else None
    itl = snap.itl[0] if snap.itl else None
    return (
        f"kv {fig('kv_cache_usage', snap.kv_cache_usage, '.1%')} · running {fig('num_running', snap.num_running, 'd')}"
        f" · waiting {fig('num_waiting', snap.num_waiting, 'd')}"
        f" · prefix hits {fig('prefix_cache_hit_rate', snap.prefix_cache_hit_rate, '.1%')}"
        f" · preemptions {fig('preemptions', snap.preemptions, 'd')}"
        f" · gen {fig('generation_throughput', snap.generation_throughput, '.1f')} tok/s"
        f" · ttft p50 {fig('ttft', ttft, '.3f')} s · itl p50 {fig('itl', itl, '.4f')} s"
    )


def ask_model(models: list[ModelCard], url: str, stdin: TextIO, stdout: TextIO) -> ModelCard:
    """Ask which of `models` to chat with (a number or a name), again until the answer is one of them;
    ValueError (one line) if no answer comes: end of input or Ctrl+C."""
    try:
        picked = _ask(models, url, stdin, stdout)
    except KeyboardInterrupt:  # wherever it lands: while reading, or while the prompt is written
        picked = None
        why = "interrupted"
    else:
        why = "input ended"
    if picked is None:
        stdout.write("\n")  # end the prompt's line: the error goes below it
        ids = ", ".join(inert(m.id) for m in models)
        raise ValueError(f"{why}: no model picked; pass --model NAME ({ids})")
    return picked


def _ask(models: list[ModelCard], url: str, stdin: TextIO, stdout: TextIO) -> ModelCard | None:
    """The numbered list, then the question until an answer fits; None at end of input."""
    stdout.write(f"{url} serves {len(models)} models:\n")
    for i, m in enumerate(models, 1):
        stdout.write(f"  {i}. {inert(m.id)}\n")  # ids come from the server: never terminal commands
    while True:
        stdout.write(f"model to chat with (1-{len(models)}): ")
        stdout.flush()
        answer = stdin.readline()
        if not answer:
            return None
        for i, m in enumerate(models, 1):
            if answer.strip() in (str(i), m.id):
                return m
        stdout.write(f"{inert(answer.strip())!r} is not one of them; type a number from 1 to {len(models)} or a name\n")


def _check_terminal() -> None:
    """The app draws on a terminal and reads keys from it: refuse at once (ValueError) when there is none."""
    if not (sys.stdin.isatty() and sys.stdout.isatty() and sys.stderr.isatty()):  # Textual draws on stderr
        raise ValueError("the app needs a terminal (stdin, stdout and stderr must be a TTY); --check works without one")


def _run_app(service: RemoteService, args: argparse.Namespace) -> int:
    """The app in attach mode: chat tabs over HTTP, the remote dashboard, the saved chats as in the local app."""
    from nanovllm_tui.app.app import NanoVllmApp  # Textual only when there is a UI to show
    from nanovllm_tui.app.history.chat_history import ChatHistory
    from nanovllm_tui.app.history.paths import resolve

    history = ChatHistory.open(resolve(args.history, args.no_history))  # never raises: off, with a reason
    NanoVllmApp(service, owns_service=True, history=history, reopen=args.reopen).run()
    return 0
