"""App-wide preferences kept in the history file (schema v3's key/value table), typed: how many chats to reopen.

A value that does not parse (hand-edited, or another version's) reads as the default; it is never an error.
"""

from __future__ import annotations

from nanovllm_tui.app.history.paths import DEFAULT_REOPEN
from nanovllm_tui.app.history.store import HistoryStore

REOPEN_KEY = "reopen"


def saved_reopen(store: HistoryStore) -> int:
    """How many recent chats to reopen at start, as saved (DEFAULT_REOPEN until it is set)."""
    raw = store.preference(REOPEN_KEY)
    try:
        value = int(raw) if raw is not None else DEFAULT_REOPEN
    except ValueError:
        return DEFAULT_REOPEN
    return value if value >= 0 else DEFAULT_REOPEN


def save_reopen(store: HistoryStore, count: int) -> None:
    """Save how many recent chats to reopen at start (a count below 0 is a caller's bug)."""
    if count < 0:
        raise ValueError(f"reopen count must be at least 0, got {count}")
    store.set_preference(REOPEN_KEY, str(count))
