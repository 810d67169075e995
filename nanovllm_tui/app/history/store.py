"""HistoryStore: the chats in one SQLite file (WAL; schema migrated on open; one transaction per write).

Opening never damages a file it does not understand: a non-database, a corrupt database, one from a newer schema,
an unwritable file or a missing directory each raise HistoryUnavailable with one line saying why, before anything
is written. Every write commits on its own, so a killed process loses at most the write in flight.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from nanovllm_tui.app.history.checks import BUSY_TIMEOUT_S, HistoryUnavailable, check_file, check_location, reason
from nanovllm_tui.app.history.records import MessageRecord, SessionRecord, settings_from, settings_to_json
from nanovllm_tui.app.history.schema import migrate

SESSION_COLUMNS = "s.id, s.uid, s.title, s.created_at, s.updated_at, s.model, s.system_prompt, s.settings, s.open"
MESSAGE_COLUMNS = (
    "seq, role, content, reasoning, status, finish_reason, error, prompt_tokens, cached_tokens, "
    "completion_tokens, ttft, tok_s, created_at"
)


class HistoryStore:
    """Reads and writes sessions and messages. Not thread-safe: the app uses it from its writer thread only."""

    def __init__(self, conn: sqlite3.Connection, path: Path, migrated_from: int):
        self.conn = conn
        self.path = path
        self.migrated_from = migrated_from  # the version found on open (0: a new file)

    @classmethod
    def open(cls, path: Path, *, create_dir: bool = False) -> HistoryStore:
        """Open (creating if absent) and migrate; HistoryUnavailable says why not. Any thread may use the
        result afterwards, one at a time."""
        path = Path(os.path.abspath(path))
        check_location(path, create_dir)
        mode = "rw" if path.exists() else "rwc"
        try:
            conn = sqlite3.connect(
                f"{path.as_uri()}?mode={mode}",
                uri=True,
                timeout=BUSY_TIMEOUT_S,
                isolation_level=None,  # autocommit: every write below is its own transaction
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise HistoryUnavailable(reason(path, exc)) from None
        try:
            check_file(conn, path)
            if conn.execute("PRAGMA journal_mode=WAL").fetchone()[0] != "wal":
                raise HistoryUnavailable(f"{path} cannot use write-ahead logging (WAL)")
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a killed process loses no commit
            conn.execute("PRAGMA foreign_keys=ON")
            found = migrate(conn)
        except HistoryUnavailable:
            conn.close()
            raise
        except sqlite3.Error as exc:
            conn.close()
            raise HistoryUnavailable(reason(path, exc)) from None
        return cls(conn, path, found)

    def close(self) -> None:
        self.conn.close()

    # -- writes ------------------------------------------------------------------------------------
    def create_session(self, record: SessionRecord) -> int:
        """Insert a session (a uid already stored is left as it is); returns its id."""
        s = record.settings
        self.conn.execute(
            "INSERT INTO sessions (uid, title, created_at, updated_at, model, system_prompt, settings, open) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(uid) DO NOTHING",
            (
                record.uid,
                record.title,
                record.created_at,
                record.updated_at,
                record.model,
                s.system_prompt,
                settings_to_json(s),
                int(record.is_open),
            ),
        )
        return self._id(record.uid)

    def update_settings(self, uid: str, record: SessionRecord) -> None:
        """Store a session's model and settings (its title and messages are left alone)."""
        self.conn.execute(
            "UPDATE sessions SET model = ?, system_prompt = ?, settings = ? WHERE uid = ?",
            (record.model, record.settings.system_prompt, settings_to_json(record.settings), uid),
        )

    def add_message(self, uid: str, m: MessageRecord) -> None:
        """Append one message and touch the session's update time, in one transaction."""
        session_id = self._id(uid)
        now = m.created_at or time.time()
        with self._transaction():
            self.conn.execute(
                f"INSERT INTO messages (session_id, {MESSAGE_COLUMNS}) VALUES (?{', ?' * 13})",
                (
                    session_id,
                    m.seq,
                    m.role,
                    m.content,
                    m.reasoning,
                    m.status,
                    m.finish_reason,
                    m.error,
                    m.prompt_tokens,
                    m.cached_tokens,
                    m.completion_tokens,
                    m.ttft,
                    m.tok_s,
                    now,
                ),
            )
            self.conn.execute("UPDATE sessions SET updated_at = ? WHERE id = ?", (now, session_id))

    def truncate(self, uid: str, after_seq: int) -> None:
        """Drop a session's messages after `after_seq` (a regenerated answer replaces the old one)."""
        self.conn.execute(
            "DELETE FROM messages WHERE seq > ? AND session_id = (SELECT id FROM sessions WHERE uid = ?)",
            (after_seq, uid),
        )

    def set_open(self, uid: str, is_open: bool) -> None:
        self.conn.execute("UPDATE sessions SET open = ? WHERE uid = ?", (int(is_open), uid))

    def keep_open(self, uids: list[str]) -> None:
        """Only these sessions are open as tabs now (the ones not reopened drop out of the next reopen)."""
        marks = ",".join("?" * len(uids))
        self.conn.execute(f"UPDATE sessions SET open = (uid IN ({marks})) WHERE open != (uid IN ({marks}))", uids * 2)

    def rename(self, session_id: int, title: str) -> None:
        self.conn.execute("UPDATE sessions SET title = ? WHERE id = ?", (title, session_id))

    def delete(self, session_id: int) -> None:
        """Delete a session and (by cascade) its messages."""
        self.conn.execute("DELETE FROM sessions WHERE id = ?", (session_id,))

    def set_preference(self, key: str, value: str) -> None:
        """Store an app-wide preference (replacing its old value)."""
        self.conn.execute(
            "INSERT INTO preferences (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # -- reads -------------------------------------------------------------------------------------
    def list_sessions(self, query: str = "", limit: int = -1) -> list[SessionRecord]:
        """Sessions newest first, with their message counts; `query` keeps those whose title or any message
        contains it (case-insensitive for ASCII)."""
        where, args = "", []
        if query:
            pattern = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            where = (
                "WHERE s.title LIKE ? ESCAPE '\\' OR EXISTS (SELECT 1 FROM messages m "
                "WHERE m.session_id = s.id AND m.content LIKE ? ESCAPE '\\')"
            )
            args = [pattern, pattern]
        rows = self.conn.execute(
            f"SELECT {SESSION_COLUMNS}, (SELECT COUNT(*) FROM messages m WHERE m.session_id = s.id) "
            f"FROM sessions s {where} ORDER BY s.updated_at DESC, s.id DESC LIMIT ?",
            (*args, limit),
        )
        return [self._session(row) for row in rows]

    def load(self, session_id: int) -> SessionRecord | None:
        """A session with all its messages, or None if there is no such id."""
        row = self.conn.execute(
            f"SELECT {SESSION_COLUMNS}, (SELECT COUNT(*) FROM messages m WHERE m.session_id = s.id) "
            "FROM sessions s WHERE s.id = ?",
            (session_id,),
        ).fetchone()
        if row is None:
            return None
        record = self._session(row)
        rows = self.conn.execute(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE session_id = ? ORDER BY seq, id", (session_id,)
        )
        record.messages = [self._message(row) for row in rows]
        return record

    def preference(self, key: str) -> str | None:
        """An app-wide preference as stored, or None when it was never set."""
        row = self.conn.execute("SELECT value FROM preferences WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def load_uid(self, uid: str) -> SessionRecord | None:
        row = self.conn.execute("SELECT id FROM sessions WHERE uid = ?", (uid,)).fetchone()
        return None if row is None else self.load(row[0])

    def reopen(self, limit: int) -> list[SessionRecord]:
        """The `limit` most recently updated sessions that were open as tabs, oldest first (tab order)."""
        rows = self.conn.execute(
            "SELECT id FROM sessions WHERE open = 1 ORDER BY updated_at DESC, id DESC LIMIT ?", (limit,)
        ).fetchall()
        loaded = (self.load(row[0]) for row in reversed(rows))
        return [record for record in loaded if record is not None]

    # -- helpers -----------------------------------------------------------------------------------
    def _id(self, uid: str) -> int:
        row = self.conn.execute("SELECT id FROM sessions WHERE uid = ?", (uid,)).fetchone()
        if row is None:
            raise KeyError(f"no session with uid {uid!r} in {self.path}")
        return int(row[0])

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """Commit the block as one transaction, or roll it back on an exception."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self.conn.in_transaction:  # some errors (e.g. a full disk) have rolled it back already
                self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    @staticmethod
    def _message(row: Sequence) -> MessageRecord:
        seq, role, content, reasoning, status, finish, error, prompt, cached, completion, ttft, tok_s, created = row
        return MessageRecord(
            role=role,
            content=content,
            reasoning=reasoning,
            status=status,
            finish_reason=finish,
            error=error,
            prompt_tokens=prompt,
            cached_tokens=cached,
            completion_tokens=completion,
            ttft=ttft,
            tok_s=tok_s,
            seq=seq,
            created_at=created,
        )

    @staticmethod
    def _session(row: Sequence) -> SessionRecord:
        sid, uid, title, created, updated, model, system_prompt, settings, is_open, count = row
        return SessionRecord(
            uid=uid,
            title=title,
            created_at=created,
            updated_at=updated,
            model=model,
            settings=settings_from(system_prompt, settings),
            id=sid,
            is_open=bool(is_open),
            num_messages=count,
        )
