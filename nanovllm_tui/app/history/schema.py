"""The history database's schema, versioned with PRAGMA user_version, and the migrations between versions.

v1: sessions (title, times, model, system prompt, sampling settings as JSON) and messages (role, text, reasoning,
finish reason, token counts, TTFT, tok/s). v2: each message's status (complete / stopped / failed) and error, its
cached prompt tokens, and whether a session is open as a tab. v3: app-wide preferences as key/value text (how many
chats to reopen at start). A session's sampling settings (penalties and min_p included) live in its JSON `settings`
column, so a new setting needs no migration. A new version appends one migration here; a database from a newer
version than SCHEMA_VERSION is never touched.
"""

from __future__ import annotations

import sqlite3

V1 = """
CREATE TABLE sessions (
    id INTEGER PRIMARY KEY,
    uid TEXT NOT NULL UNIQUE,
    title TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    model TEXT NOT NULL DEFAULT '',
    system_prompt TEXT NOT NULL DEFAULT '',
    settings TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    reasoning TEXT NOT NULL DEFAULT '',
    finish_reason TEXT,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    ttft REAL,
    tok_s REAL,
    created_at REAL NOT NULL
);
CREATE INDEX messages_by_session ON messages(session_id, seq);
"""

V1_TO_V2 = """
ALTER TABLE messages ADD COLUMN status TEXT NOT NULL DEFAULT 'complete';
ALTER TABLE messages ADD COLUMN error TEXT;
ALTER TABLE messages ADD COLUMN cached_tokens INTEGER;
UPDATE messages SET status = CASE finish_reason WHEN 'abort' THEN 'stopped' WHEN 'error' THEN 'failed'
    ELSE 'complete' END;
ALTER TABLE sessions ADD COLUMN open INTEGER NOT NULL DEFAULT 0;
CREATE INDEX sessions_by_update ON sessions(updated_at);
"""

V2_TO_V3 = """
CREATE TABLE preferences (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

# MIGRATIONS[v] takes a database at version v to v + 1; version 0 is an empty file.
MIGRATIONS: dict[int, str] = {0: V1, 1: V1_TO_V2, 2: V2_TO_V3}
SCHEMA_VERSION = len(MIGRATIONS)


def user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, target: int = SCHEMA_VERSION) -> int:
    """Bring the database to `target`, one version per transaction (a crash leaves a whole version behind).

    Returns the version found. The caller has checked that it is not newer than SCHEMA_VERSION."""
    found = user_version(conn)
    for version in range(found, target):
        # BEGIN ... COMMIT inside the script makes the step and its version bump one transaction.
        try:
            conn.executescript(
                f"BEGIN IMMEDIATE;\n{MIGRATIONS[version]}\nPRAGMA user_version = {version + 1};\nCOMMIT;"
            )
        except sqlite3.Error:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    return found
