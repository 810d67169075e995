"""Where the chat history lives: --no-history, --history PATH, $NANOVLLM_TUI_HISTORY, then the XDG data dir.

The default is $XDG_DATA_HOME/nanovllm-tui/history.sqlite3, or ~/.local/share/nanovllm-tui/history.sqlite3 when
XDG_DATA_HOME is unset or relative (the XDG spec says to ignore a relative value). `--reopen N` overrides, for one
run, how many chats are reopened at start (otherwise a preference saved in the file).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from nanovllm_tui.app.engine_args import int_at_least

ENV_VAR = "NANOVLLM_TUI_HISTORY"
APP_DIR = "nanovllm-tui"
FILE_NAME = "history.sqlite3"
DEFAULT_REOPEN = 3  # chats reopened at start until the user saves another count (ctrl+o)
REOPEN_SAVED = -1  # --reopen not given: reopen as many as the history file's saved preference says


@dataclass(frozen=True, slots=True)
class HistoryLocation:
    """The database file to use (None: history off) and whether it is the default location (then its
    directory may be created; a directory the user named must already exist)."""

    path: Path | None
    is_default: bool = False
    why_off: str = ""


def default_path(env: Mapping[str, str] | None = None) -> Path:
    """The XDG data location of the history database."""
    env = os.environ if env is None else env
    base = env.get("XDG_DATA_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path(env.get("HOME") or Path.home()) / ".local" / "share"
    return root / APP_DIR / FILE_NAME


def resolve(path: str | None, no_history: bool, env: Mapping[str, str] | None = None) -> HistoryLocation:
    """The database location from the flags and the environment (first one set wins)."""
    env = os.environ if env is None else env
    if no_history:
        return HistoryLocation(None, why_off="--no-history")
    if path:
        return HistoryLocation(Path(path).expanduser())
    if env.get(ENV_VAR):
        return HistoryLocation(Path(env[ENV_VAR]).expanduser())
    return HistoryLocation(default_path(env), is_default=True)


def add_history_args(parser: argparse.ArgumentParser) -> None:
    """--history PATH, --no-history and --reopen N (the app's part of the command line)."""
    group = parser.add_argument_group("chat history")
    where = group.add_mutually_exclusive_group()
    where.add_argument(
        "--history",
        metavar="PATH",
        default=None,
        help=f"the SQLite file that keeps chats (default: ${ENV_VAR}, else "
        f"$XDG_DATA_HOME/{APP_DIR}/{FILE_NAME} or ~/.local/share/{APP_DIR}/{FILE_NAME})",
    )
    where.add_argument("--no-history", action="store_true", help="keep chats in memory only")
    group.add_argument(
        "--reopen",
        type=int_at_least(0),
        default=REOPEN_SAVED,
        metavar="N",
        help="reopen the N most recent chats as tabs at start, this run only (0: start with a new chat; "
        f"default: the count saved on the saved-chats screen, ctrl+o, {DEFAULT_REOPEN} until one is saved)",
    )
