"""The checks that run before the history file is written: is the place usable, is the file a database of a
schema this version knows, is it intact. Each failure is a HistoryUnavailable with one line saying why."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from nanovllm_tui.app.history.schema import SCHEMA_VERSION, user_version

BUSY_TIMEOUT_S = 5.0  # another instance's write in progress: wait this long for it, then report the lock


class HistoryUnavailable(Exception):
    """History cannot be used with this file; the message is one line saying why."""


def reason(path: Path, exc: sqlite3.Error) -> str:
    """One line for a sqlite error met while opening `path`."""
    text = str(exc)
    if "not a database" in text:
        return f"{path} is not a SQLite database"
    if "malformed" in text or "corrupt" in text:
        return f"{path} is corrupt ({text})"
    if "readonly" in text or "read-only" in text:
        return f"{path} is read-only"
    if "locked" in text or "busy" in text:
        return f"{path} is in use by another program and stayed locked for {BUSY_TIMEOUT_S:g} s"
    if "unable to open" in text:
        return f"{path} cannot be opened ({text})"
    return f"{path}: {text}"


def check_location(path: Path, create: bool) -> None:
    parent = path.parent
    if not parent.is_dir():
        if not create:
            raise HistoryUnavailable(f"the directory {parent} does not exist")
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise HistoryUnavailable(f"cannot create {parent} ({exc.strerror or exc})") from None
    if path.exists() and not path.is_file():
        raise HistoryUnavailable(f"{path} is not a regular file")
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise HistoryUnavailable(f"{path} is read-only")
    # WAL keeps two files beside the database: the directory must take new files.
    if not os.access(parent, os.W_OK | os.X_OK):
        raise HistoryUnavailable(f"the directory {parent} is read-only")


def check_file(conn: sqlite3.Connection, path: Path) -> None:
    """Refuse a newer schema or a damaged file before anything is written."""
    found = user_version(conn)
    if found > SCHEMA_VERSION:
        raise HistoryUnavailable(
            f"{path} has history schema v{found}, newer than this nanovllm-tui's v{SCHEMA_VERSION}; "
            "upgrade nanovllm-tui or pick another file with --history"
        )
    problems = [row[0] for row in conn.execute("PRAGMA quick_check(3)")]
    if problems != ["ok"]:
        detail = " ".join("; ".join(problems).split())
        raise HistoryUnavailable(f"{path} is corrupt ({detail[:160]})")
