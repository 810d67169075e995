"""ChatHistory: what the app holds about its history — the writer (None when off), one line saying where the
history is or why it is off, and whether another running instance uses the same file.

Opening never raises: every failure becomes "history is off: <why>" and the app runs with chats in memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO

from nanovllm_tui.app.history.paths import HistoryLocation
from nanovllm_tui.app.history.schema import SCHEMA_VERSION
from nanovllm_tui.app.history.store import HistoryStore, HistoryUnavailable
from nanovllm_tui.app.history.writer import HistoryWriter

try:
    import fcntl
except ImportError:  # not POSIX: no instance lock, every instance reopens its chats
    fcntl = None  # type: ignore[assignment]


def _instance_lock(path: Path) -> tuple[IO[str] | None, bool]:
    """An exclusive lock on `<db>.lock`, held for the app's life: (file, False); (None, True) when another
    running instance holds it; (None, False) when no lock can be had (then nothing is shared knowingly)."""
    if fcntl is None:
        return None, False
    try:
        handle = open(path.with_name(path.name + ".lock"), "a")  # noqa: SIM115 (held open until close())
    except OSError:
        return None, False
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None, True
    return handle, False


class ChatHistory:
    """The history as the app sees it. `shared`: another running instance uses the file, so this one leaves
    the chats it has open alone (no reopening, no opening them from the sessions screen)."""

    def __init__(self, writer: HistoryWriter | None, note: str, *, shared: bool = False, lock: IO[str] | None = None):
        self.writer = writer
        self.note = note
        self.shared = shared
        self._lock = lock

    @classmethod
    def off(cls, why: str) -> ChatHistory:
        return cls(None, f"history is off: {why}")

    @classmethod
    def open(cls, location: HistoryLocation) -> ChatHistory:
        """The history at `location`, or an off one whose note says why."""
        if location.path is None:
            return cls.off(location.why_off or "no file")
        try:
            store = HistoryStore.open(location.path, create_dir=location.is_default)
        except HistoryUnavailable as exc:
            return cls.off(f"{exc}; the file is left as it is (--history PATH picks another, --no-history hides this)")
        lock, shared = _instance_lock(store.path)
        note = f"history: {location.path}"  # as the user named it
        if store.migrated_from not in (0, SCHEMA_VERSION):
            note += f" (upgraded from schema v{store.migrated_from})"
        if shared:
            note += " · another nanovllm-tui is using it: its open chats are not reopened here"
        return cls(HistoryWriter(store), note, shared=shared, lock=lock)

    @property
    def enabled(self) -> bool:
        return self.writer is not None

    def close(self, timeout: float = 5.0) -> bool:
        """Write what is queued, close the database, release the instance lock."""
        done = self.writer.close(timeout) if self.writer is not None else True
        if self._lock is not None:
            self._lock.close()  # closing the file releases the flock
            self._lock = None
        return done
