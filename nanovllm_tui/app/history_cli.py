"""`nanovllm-tui history list|export`: the saved chats from the command line (no model, no torch).

`history list [--search TEXT] [--limit N]` prints one line per chat, newest first; `history export ID --format
md|json [-o FILE]` writes one chat as Markdown or as an OpenAI request body (stdout without -o). Both take
--history PATH like the app (default: $NANOVLLM_TUI_HISTORY, then the XDG data dir). Problems are one line on
stderr and exit status 2; a missing history file is never created here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nanovllm_tui.app.engine_args import OneLineParser, int_at_least
from nanovllm_tui.app.history.export import FORMATS, render, when
from nanovllm_tui.app.history.paths import ENV_VAR, resolve
from nanovllm_tui.app.history.records import SessionRecord
from nanovllm_tui.app.history.store import HistoryStore, HistoryUnavailable
from nanovllm_tui.app.text import inert

EXIT_USAGE = 2


class HistoryCliError(Exception):
    """A problem the user fixes (wrong id, unusable file): one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="nanovllm-tui history", description="List and export the chats the app saved.")
    common = OneLineParser(add_help=False)
    common.add_argument(
        "--history", metavar="PATH", help=f"the history file (default: ${ENV_VAR}, else the XDG data dir)"
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="{list,export}")
    listing = sub.add_parser(
        "list", parents=[common], help="one line per chat: id, last update, messages, model, title"
    )
    listing.add_argument("--search", default="", metavar="TEXT", help="only chats whose title or text contains TEXT")
    listing.add_argument("--limit", type=int_at_least(1), default=None, metavar="N", help="at most N chats")
    export = sub.add_parser("export", parents=[common], help="write one chat as Markdown or as OpenAI JSON")
    export.add_argument("id", type=int_at_least(1), help="the chat's id (from `history list`)")
    export.add_argument("--format", choices=sorted(FORMATS), default="md", help="md: Markdown; json: OpenAI")
    export.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    return p


def open_store(path_arg: str | None) -> HistoryStore:
    """The store at the chosen location; HistoryCliError when there is none yet or it cannot be used."""
    location = resolve(path_arg, no_history=False)
    path = location.path
    if path is None or not path.is_file():
        raise HistoryCliError(f"no history at {path} yet (the app creates it; --history PATH reads another file)")
    try:
        return HistoryStore.open(path)
    except HistoryUnavailable as exc:
        raise HistoryCliError(str(exc)) from None


def list_lines(records: list[SessionRecord]) -> list[str]:
    """The `history list` table: a header, then one line per session."""
    lines = [f"{'ID':>5}  {'UPDATED':<20}  {'MSGS':>4}  {'MODEL':<24}  TITLE"]
    for r in records:
        lines.append(
            f"{r.id:>5}  {when(r.updated_at):<20}  {r.num_messages:>4}  {inert(r.model[:24]):<24}  {inert(r.title)}"
        )
    return lines


def run(args: argparse.Namespace) -> None:
    store = open_store(args.history)
    try:
        if args.command == "list":
            records = store.list_sessions(args.search, -1 if args.limit is None else args.limit)
            print("\n".join(list_lines(records)))
            return
        record = store.load(args.id)
        if record is None:
            raise HistoryCliError(f"no chat {args.id} in {store.path}; `nanovllm-tui history list` shows the ids")
        text = render(record, args.format)
    finally:
        store.close()
    if args.output:
        try:
            Path(args.output).expanduser().write_text(text, encoding="utf-8")
        except OSError as exc:
            raise HistoryCliError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    else:
        sys.stdout.write(text)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except HistoryCliError as exc:
        print(f"nanovllm-tui history: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `history list | head`
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
