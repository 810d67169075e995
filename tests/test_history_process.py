"""The history across processes: kill -9 in the middle of writes, read-only files and directories, a corrupt file
and a v1 file through `nanovllm-tui history`, and the CLI's list and export."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from nanovllm_tui.app.history import schema
from nanovllm_tui.app.history.records import MessageRecord, SessionRecord
from nanovllm_tui.app.history.store import HistoryStore

ROOT = Path(__file__).resolve().parents[1]
NOBODY = 65534
T0 = 1_780_000_000.0

KILL_CHILD = """
import sys, time
from pathlib import Path
from nanovllm_tui.app.history.records import MessageRecord, SessionRecord
from nanovllm_tui.app.history.store import HistoryStore
from nanovllm_tui.app.history.writer import HistoryWriter

writer = HistoryWriter(HistoryStore.open(Path(sys.argv[1])))
writer.submit(lambda s: s.create_session(SessionRecord("k", "kill test", time.time(), time.time()))).result(10)
big = "x" * 200_000  # each message spans many pages: a kill lands inside a write
i = 0
while True:
    future = writer.submit(lambda s, i=i: s.add_message("k", MessageRecord("user", f"{i}:" + big, seq=i)))
    future.add_done_callback(lambda f, i=i: f.exception() is None and print(i, flush=True))
    i += 1
    if i % 4 == 0:
        future.result(10)  # keep the queue short: what is printed is what was committed, give or take 4
"""

# Opens the history as the app does and prints its note; as root it first becomes nobody (root ignores file
# modes), after the imports (the interpreter under /root is not readable to nobody).
NOTE_CHILD = """
import os, sys
from nanovllm_tui.app.history.chat_history import ChatHistory
from nanovllm_tui.app.history.paths import resolve
if os.geteuid() == 0:
    os.setgid(65534)
    os.setuid(65534)
history = ChatHistory.open(resolve(sys.argv[1], False, {}))
print(history.note)
history.close()
"""


def python(*args: str, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=env,
    )


def history_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`nanovllm-tui history ...` through the app's entry point."""
    return python("-m", "nanovllm_tui.app.cli", "history", *args, env=env)


def test_kill_9_mid_write_keeps_every_committed_message(tmp_path):
    path = tmp_path / "h.sqlite3"
    child = subprocess.Popen([sys.executable, "-c", KILL_CHILD, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    try:
        printed = []
        for line in child.stdout:
            printed.append(int(line))
            if len(printed) >= 30:
                break
        assert len(printed) >= 30, "the child stopped writing early"
        os.kill(child.pid, signal.SIGKILL)
        printed += [int(line) for line in child.stdout]
    finally:
        child.kill()
        child.wait(30)
    assert child.returncode == -signal.SIGKILL
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    rows = conn.execute("SELECT seq, content FROM messages ORDER BY seq").fetchall()
    conn.close()
    seqs = [seq for seq, _ in rows]
    assert seqs == list(range(len(rows)))  # no gap, nothing half-written
    assert set(printed) <= set(seqs)
    assert all(content == f"{seq}:" + "x" * 200_000 for seq, content in rows)
    store = HistoryStore.open(path)  # and the next start opens it as usual
    assert store.list_sessions()[0].num_messages == len(rows)
    store.close()


@pytest.fixture
def open_dir():
    """A directory anyone can enter (pytest's tmp_path is private to root, and these children may be nobody)."""
    path = Path(tempfile.mkdtemp(prefix="history-"))
    path.chmod(0o755)
    yield path
    for p in (path, *path.rglob("*")):
        if p.is_dir():
            p.chmod(0o755)
    shutil.rmtree(path)


def make_db(path: Path) -> bytes:
    store = HistoryStore.open(path)
    store.create_session(SessionRecord("u", "kept", T0, T0))
    store.add_message("u", MessageRecord("user", "hello", created_at=T0))
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    for extra in ("-wal", "-shm"):
        path.with_name(path.name + extra).unlink(missing_ok=True)
    path.chmod(0o644)
    return path.read_bytes()


def note_as_other_user(path: Path) -> str:
    proc = python("-c", NOTE_CHILD, str(path))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout
    return lines[0]


def test_read_only_file_and_directory_turn_history_off_untouched(open_dir):
    ro_dir = open_dir / "ro"
    ro_dir.mkdir()
    data = make_db(ro_dir / "h.sqlite3")
    if os.geteuid() != 0:  # as root the child runs as nobody, to whom a root-owned 0755 dir is read-only
        (ro_dir / "h.sqlite3").chmod(0o444)
        ro_dir.chmod(0o555)
    note = note_as_other_user(ro_dir / "h.sqlite3")
    assert note.startswith("history is off: ") and "read-only" in note and "left as it is" in note, note
    assert (ro_dir / "h.sqlite3").read_bytes() == data
    assert sorted(p.name for p in ro_dir.iterdir()) == ["h.sqlite3"]
    note = note_as_other_user(ro_dir / "new.sqlite3")  # no file yet, and none can be made
    assert note.startswith("history is off: ") and f"the directory {ro_dir} is read-only" in note, note
    note = note_as_other_user(open_dir / "missing" / "h.sqlite3")
    assert note.startswith("history is off: ") and "does not exist" in note, note


def test_read_only_file_in_a_writable_directory(open_dir):
    rw_dir = open_dir / "rw"
    rw_dir.mkdir()
    rw_dir.chmod(0o777)
    data = make_db(rw_dir / "h.sqlite3")
    (rw_dir / "h.sqlite3").chmod(0o444)
    note = note_as_other_user(rw_dir / "h.sqlite3")
    assert note == (
        f"history is off: {rw_dir / 'h.sqlite3'} is read-only; the file is left as it is "
        "(--history PATH picks another, --no-history hides this)"
    )
    assert (rw_dir / "h.sqlite3").read_bytes() == data
    assert sorted(p.name for p in rw_dir.iterdir()) == ["h.sqlite3"]


def test_cli_list_and_export(tmp_path):
    path = tmp_path / "h.sqlite3"
    store = HistoryStore.open(path)
    store.create_session(SessionRecord("a", "First chat", T0, T0, "tiny"))
    store.add_message("a", MessageRecord("user", "hi", seq=0, created_at=T0))
    store.add_message("a", MessageRecord("assistant", "hello", seq=1, finish_reason="stop", created_at=T0 + 60))
    store.create_session(SessionRecord("b", "Second chat", T0, T0, "tiny"))
    store.close()
    proc = history_cli("list", "--history", str(path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "   ID  UPDATED               MSGS  MODEL                     TITLE",
        "    1  2026-05-28 20:27 UTC     2  tiny                      First chat",
        "    2  2026-05-28 20:26 UTC     0  tiny                      Second chat",
    ]
    proc = history_cli("list", "--history", str(path), "--search", "HELLO")
    assert [line.split()[0] for line in proc.stdout.splitlines()] == ["ID", "1"]
    proc = history_cli("export", "1", "--format", "json", "--history", str(path))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["messages"][1:] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]
    out = tmp_path / "chat.md"
    proc = history_cli("export", "1", "--format", "md", "-o", str(out), "--history", str(path))
    assert proc.returncode == 0 and proc.stdout == "", proc.stderr
    assert out.read_text().startswith("# First chat\n\n- session: 1\n- model: tiny\n")
    proc = history_cli("list", env={**os.environ, "NANOVLLM_TUI_HISTORY": str(path)})  # the variable names it
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 3, proc.stderr
    store = HistoryStore.open(path)
    store.rename(2, "evil \x1b]0;pwned\x07 title")  # a title from an older version, or edited by hand
    store.close()
    proc = history_cli("list", "--history", str(path), "--search", "evil")
    assert proc.stdout.splitlines()[1].endswith("evil ␛]0;pwned␇ title") and "\x1b" not in proc.stdout
    proc = history_cli("export", "9", "--history", str(path))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"nanovllm-tui history: error: no chat 9 in {path}; `nanovllm-tui history list` shows the ids"
    ]


def test_cli_refuses_missing_corrupt_and_newer_files_untouched(tmp_path):
    missing = tmp_path / "none.sqlite3"
    proc = history_cli("list", "--history", str(missing))
    assert proc.returncode == 2 and "no history at" in proc.stderr and not missing.exists()
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"SQLite format 3\x00" + b"\xff" * 5000)  # a database header over garbage
    proc = history_cli("list", "--history", str(junk))
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert junk.read_bytes() == b"SQLite format 3\x00" + b"\xff" * 5000
    newer = tmp_path / "newer.sqlite3"  # written by a later nanovllm-tui: a schema this one must not touch
    conn = sqlite3.connect(newer)
    conn.executescript(f"CREATE TABLE sessions (x); PRAGMA user_version = {schema.SCHEMA_VERSION + 1};")
    conn.close()
    data = newer.read_bytes()
    why = (
        f"nanovllm-tui history: error: {newer} has history schema v{schema.SCHEMA_VERSION + 1}, newer than "
        f"this nanovllm-tui's v{schema.SCHEMA_VERSION}; upgrade nanovllm-tui or pick another file with --history"
    )
    for command in ("list", "export"):
        proc = history_cli(command, *(["1"] if command == "export" else []), "--history", str(newer))
        assert proc.returncode == 2 and proc.stdout == "", proc.stderr
        assert proc.stderr.splitlines() == [why]
    assert newer.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.sqlite3", "newer.sqlite3"]


def test_v1_file_migrated_by_the_cli(tmp_path):
    path = tmp_path / "v1.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(schema.V1 + "PRAGMA user_version = 1;")
    conn.execute(f"INSERT INTO sessions VALUES (1, 'u', 'from v1', {T0}, {T0}, 'm', '', '{{}}')")
    conn.execute(
        "INSERT INTO messages (session_id, seq, role, content, finish_reason, created_at) "
        f"VALUES (1, 0, 'user', 'q', NULL, {T0}), (1, 1, 'assistant', 'half', 'abort', {T0})"
    )
    conn.commit()
    conn.close()
    proc = history_cli("export", "1", "--format", "md", "--history", str(path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.endswith("## User\n\nq\n\n## Assistant\n\nhalf\n\n*stopped*\n")
    conn = sqlite3.connect(path)
    assert schema.user_version(conn) == schema.SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    assert stat.S_ISREG(path.stat().st_mode)


def test_app_flags_parse():
    from nanovllm_tui.app.cli import build_parser
    from nanovllm_tui.app.history.paths import REOPEN_SAVED

    args = build_parser().parse_args(["--history", "/x/h.sqlite3", "--reopen", "5"])
    assert (args.history, args.no_history, args.reopen) == ("/x/h.sqlite3", False, 5)
    args = build_parser().parse_args(["--no-history"])
    assert (args.history, args.no_history, args.reopen) == (None, True, REOPEN_SAVED)  # the saved count decides
    proc = python("-m", "nanovllm_tui.app.cli", "--history", "a", "--no-history")
    assert proc.returncode == 2 and "not allowed with argument" in proc.stderr and len(proc.stderr.splitlines()) == 1
