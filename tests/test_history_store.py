"""The history store on real SQLite files: round trips, search, rename/delete, reopen, the schema migration,
files it must refuse without touching them, the writer thread, paths, and the saved preferences."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from nanovllm_tui.app.history import schema
from nanovllm_tui.app.history.chat_history import ChatHistory
from nanovllm_tui.app.history.paths import DEFAULT_REOPEN, HistoryLocation, default_path, resolve
from nanovllm_tui.app.history.preferences import REOPEN_KEY, save_reopen, saved_reopen
from nanovllm_tui.app.history.records import MessageRecord, SessionRecord, settings_from, title_from
from nanovllm_tui.app.history.store import HistoryStore, HistoryUnavailable
from nanovllm_tui.app.history.writer import HistoryClosed, HistoryWriter
from nanovllm_tui.app.session import SessionSettings

T0 = 1_780_000_000.0  # 2026-05-28 20:26:40 UTC


def add_chat(store: HistoryStore, uid: str, title: str, turns: list[tuple[str, str]], t: float = T0) -> int:
    sid = store.create_session(SessionRecord(uid, title, t, t, "tiny", is_open=True))
    for seq, (role, text) in enumerate(turns):
        store.add_message(uid, MessageRecord(role, text, seq=seq, created_at=t + seq + 1))
    return sid


@pytest.fixture
def store(tmp_path):
    s = HistoryStore.open(tmp_path / "h.sqlite3")
    yield s
    s.close()


def test_round_trip_keeps_every_field(store):
    settings = SessionSettings(
        system_prompt="Be brief.",
        temperature=0.2,
        top_p=0.5,
        top_k=7,
        seed=3,
        thinking=False,
        repetition_penalty=1.2,
        presence_penalty=0.4,
        frequency_penalty=-0.3,
        min_p=0.1,
    )
    sid = store.create_session(SessionRecord("u", "A title", T0, T0, "SmolLM2", settings, is_open=True))
    answer = MessageRecord(
        "assistant", "partial", "why", "stopped", "abort", None, 20, 4, 5, 0.125, 31.5, seq=1, created_at=T0 + 2
    )
    store.add_message("u", MessageRecord("user", "question", seq=0, created_at=T0 + 1))
    store.add_message("u", answer)
    got = store.load(sid)
    assert got is not None
    assert (got.uid, got.title, got.model, got.settings, got.is_open) == ("u", "A title", "SmolLM2", settings, True)
    assert (got.created_at, got.updated_at, got.num_messages) == (T0, T0 + 2, 2)
    assert got.messages[1] == answer
    assert got.chat_messages() == [{"role": "user", "content": "question"}, {"role": "assistant", "content": "partial"}]
    assert store.load(sid + 1) is None


def test_search_by_title_and_content_case_insensitive_and_literal(store):
    a = add_chat(store, "a", "Sorting lists", [("user", "how to sort?"), ("assistant", "use sorted()")], T0)
    b = add_chat(store, "b", "Weather", [("user", "is it 100% sunny today?")], T0 + 10)
    assert [r.id for r in store.list_sessions()] == [b, a]  # newest first
    assert [r.id for r in store.list_sessions("SORTED(")] == [a]  # message text, any case
    assert [r.id for r in store.list_sessions("weather")] == [b]  # title
    assert [r.id for r in store.list_sessions("100%")] == [b]
    assert store.list_sessions("0%s") == []  # % and _ are literal, not wildcards
    assert store.list_sessions("sunny_today") == []
    assert [r.num_messages for r in store.list_sessions()] == [1, 2]


def test_rename_delete_truncate_and_reopen(store):
    a = add_chat(store, "a", "first", [("user", "q"), ("assistant", "a1")], T0)
    b = add_chat(store, "b", "second", [("user", "q2")], T0 + 10)
    c = add_chat(store, "c", "third", [("user", "q3")], T0 + 20)
    store.set_open("b", False)
    assert [r.id for r in store.reopen(5)] == [a, c]  # open ones, oldest first (tab order)
    assert [r.id for r in store.reopen(1)] == [c]  # the most recent
    store.keep_open(["c"])  # the chats not reopened drop out of the next reopen
    assert [r.id for r in store.reopen(5)] == [c]
    loaded = store.load_uid("a")
    assert loaded is not None and loaded.id == a and store.load_uid("zz") is None
    store.rename(a, "renamed")
    store.truncate("a", 0)
    got = store.load(a)
    assert got is not None and got.title == "renamed" and [m.content for m in got.messages] == ["q"]
    store.delete(b)
    assert store.load(b) is None
    assert store.conn.execute("SELECT COUNT(*) FROM messages WHERE session_id = ?", (b,)).fetchone()[0] == 0


def test_v1_file_is_migrated_with_its_data(tmp_path):
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(schema.V1 + "PRAGMA user_version = 1;")
    conn.execute("INSERT INTO sessions VALUES (1, 'u', 'old chat', 1.0, 2.0, 'm', 'sys', '{\"temperature\": 0.1}')")
    rows = [
        (1, 0, "user", "q", "", None),
        (1, 1, "assistant", "cut", "", "abort"),
        (1, 2, "assistant", "", "", "error"),
    ]
    conn.executemany(
        "INSERT INTO messages (session_id, seq, role, content, reasoning, finish_reason, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, 1.5)",
        rows,
    )
    conn.commit()
    conn.close()
    store = HistoryStore.open(path)
    assert (store.migrated_from, schema.user_version(store.conn)) == (1, schema.SCHEMA_VERSION)
    got = store.load(1)
    store.close()
    assert got is not None and got.settings.system_prompt == "sys" and got.settings.temperature == 0.1
    assert [m.status for m in got.messages] == ["complete", "stopped", "failed"]
    assert got.chat_messages() == [{"role": "user", "content": "q"}, {"role": "assistant", "content": "cut"}]


def test_v2_file_is_migrated_to_v3_with_its_data_and_settings(tmp_path):
    path = tmp_path / "v2.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(schema.V1 + schema.V1_TO_V2 + "PRAGMA user_version = 2;")
    penalties = '{"repetition_penalty": 1.3, "presence_penalty": 0.2, "frequency_penalty": 0.1, "min_p": 0.05}'
    conn.execute(f"INSERT INTO sessions VALUES (1, 'u', 'v2 chat', 1.0, 2.0, 'm', 'sys', '{penalties}', 1)")
    conn.execute("INSERT INTO messages (session_id, seq, role, content, created_at) VALUES (1, 0, 'user', 'q', 1.5)")
    conn.commit()
    conn.close()
    store = HistoryStore.open(path)
    try:
        assert (store.migrated_from, schema.user_version(store.conn)) == (2, schema.SCHEMA_VERSION)
        got = store.load(1)
        assert got is not None and got.is_open and [m.content for m in got.messages] == ["q"]
        s = got.settings
        assert (s.repetition_penalty, s.presence_penalty, s.frequency_penalty, s.min_p) == (1.3, 0.2, 0.1, 0.05)
        assert saved_reopen(store) == DEFAULT_REOPEN  # the new preferences table, empty
        save_reopen(store, 1)
    finally:
        store.close()
    history = ChatHistory.open(resolve(str(path), False, {}))  # reopened: v3 already, nothing to upgrade
    assert history.note == f"history: {path}"
    history.close()


def test_preferences_round_trip_and_bad_values_read_as_the_default(store):
    assert store.preference(REOPEN_KEY) is None and saved_reopen(store) == DEFAULT_REOPEN
    save_reopen(store, 0)
    assert saved_reopen(store) == 0
    save_reopen(store, 7)  # replaces, does not add a row
    assert saved_reopen(store) == 7
    assert store.conn.execute("SELECT COUNT(*) FROM preferences").fetchone()[0] == 1
    for bad in ("many", "-2", ""):  # hand-edited, or another version's
        store.set_preference(REOPEN_KEY, bad)
        assert saved_reopen(store) == DEFAULT_REOPEN
    with pytest.raises(ValueError, match="at least 0"):
        save_reopen(store, -1)


def test_a_failed_migration_leaves_the_version_and_data(tmp_path, monkeypatch):
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(schema.V1 + "PRAGMA user_version = 1;")
    conn.close()
    monkeypatch.setitem(schema.MIGRATIONS, 1, schema.V1_TO_V2 + "\nTHIS IS NOT SQL;")
    with pytest.raises(HistoryUnavailable):
        HistoryStore.open(path)
    conn = sqlite3.connect(path)
    assert schema.user_version(conn) == 1
    assert "status" not in [row[1] for row in conn.execute("PRAGMA table_info(messages)")]
    conn.close()


def refused(path: Path) -> str:
    """Open must refuse `path` and leave its bytes as they were; returns the reason."""
    before = path.read_bytes()
    with pytest.raises(HistoryUnavailable) as info:
        HistoryStore.open(path)
    assert path.read_bytes() == before
    assert "\n" not in str(info.value)
    return str(info.value)


def test_refuses_files_it_must_not_touch(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("my notes, not a database\n" * 200)
    assert "is not a SQLite database" in refused(text)
    newer = tmp_path / "newer.sqlite3"
    conn = sqlite3.connect(newer)
    conn.executescript("CREATE TABLE t (x); PRAGMA user_version = 99;")
    conn.close()
    assert "schema v99, newer than" in refused(newer)
    with pytest.raises(HistoryUnavailable, match="does not exist"):
        HistoryStore.open(tmp_path / "missing" / "h.sqlite3")
    assert not (tmp_path / "missing").exists()
    (tmp_path / "adir").mkdir()
    with pytest.raises(HistoryUnavailable, match="not a regular file"):
        HistoryStore.open(tmp_path / "adir")


def test_corrupt_database_is_refused_untouched(tmp_path):
    path = tmp_path / "h.sqlite3"
    store = HistoryStore.open(path)
    for i in range(40):
        add_chat(store, f"u{i}", f"chat {i}", [("user", "x" * 3000)])
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    data = bytearray(path.read_bytes())
    assert len(data) > 8 * 4096
    data[3 * 4096 : 5 * 4096] = b"\xa5" * (2 * 4096)  # garbage over two b-tree pages
    path.write_bytes(bytes(data))
    assert "corrupt" in refused(path) or "not a SQLite database" in refused(path)


def test_default_location_is_created_and_history_note(tmp_path):
    location = resolve(None, False, {"XDG_DATA_HOME": str(tmp_path / "xdg")})
    assert location == HistoryLocation(tmp_path / "xdg" / "nanovllm-tui" / "history.sqlite3", is_default=True)
    history = ChatHistory.open(location)
    try:
        assert history.enabled and history.note == f"history: {location.path}"
        assert location.path is not None and location.path.is_file()
    finally:
        assert history.close()


def test_paths_priority():
    env = {"HOME": "/home/u", "XDG_DATA_HOME": "relative/ignored"}
    assert default_path(env) == Path("/home/u/.local/share/nanovllm-tui/history.sqlite3")
    assert resolve(None, False, {**env, "NANOVLLM_TUI_HISTORY": "/x/h.db"}).path == Path("/x/h.db")
    assert resolve("/y/h.db", False, {**env, "NANOVLLM_TUI_HISTORY": "/x/h.db"}).path == Path("/y/h.db")
    off = resolve("/y/h.db", True, env)
    assert off.path is None and ChatHistory.open(off).note == "history is off: --no-history"


def test_unusable_file_turns_history_off_with_one_line(tmp_path):
    path = tmp_path / "h.sqlite3"
    path.write_bytes(b"\x00garbage" * 1000)
    history = ChatHistory.open(resolve(str(path), False, {}))
    assert not history.enabled
    assert history.note.startswith(f"history is off: {path} is not a SQLite database; the file is left as it is")


def test_second_instance_is_marked_shared(tmp_path):
    location = resolve(str(tmp_path / "h.sqlite3"), False, {})
    first, second = ChatHistory.open(location), ChatHistory.open(location)
    try:
        assert (first.shared, second.shared) == (False, True)
        assert "another nanovllm-tui is using it" in second.note
        # Both write (WAL): each one's chat is there for the other.
        assert first.writer is not None and second.writer is not None
        first.writer.submit(lambda s: add_chat(s, "one", "from one", [("user", "1")])).result(10)
        second.writer.submit(lambda s: add_chat(s, "two", "from two", [("user", "2")])).result(10)
        titles = first.writer.submit(lambda s: [r.title for r in s.list_sessions()]).result(10)
        assert sorted(titles) == ["from one", "from two"]
    finally:
        first.close()
        second.close()
    third = ChatHistory.open(location)  # the lock went with the first instance
    assert not third.shared
    third.close()


def test_writer_runs_in_order_off_the_calling_thread(tmp_path):
    writer = HistoryWriter(HistoryStore.open(tmp_path / "h.sqlite3"))
    threads: list[str] = []
    writer.submit(lambda s: threads.append(threading.current_thread().name))
    writer.submit(lambda s: add_chat(s, "u", "t", [("user", str(i)) for i in range(50)]))
    bad = writer.submit(lambda s: s.add_message("no-such-uid", MessageRecord("user", "x")))
    assert writer.flush(10)
    assert threads == ["history-writer"]
    assert isinstance(bad.exception(), KeyError)
    assert writer.take_errors() == ["\"no session with uid 'no-such-uid' in " + str(tmp_path / "h.sqlite3") + '"']
    assert writer.take_errors() == []
    got = writer.submit(lambda s: s.load(1)).result(10)
    assert [m.content for m in got.messages] == [str(i) for i in range(50)]
    assert writer.close(10)
    with pytest.raises(HistoryClosed):
        writer.submit(lambda s: None).result(1)


def test_settings_and_titles():
    assert settings_from("p", '{"temperature": 1, "seed": 5, "thinking": false, "top_k": "x", "new": 1}') == (
        SessionSettings(system_prompt="p", temperature=1.0, seed=5, thinking=False)
    )
    assert settings_from("", "not json") == SessionSettings(system_prompt="")
    assert title_from("\n  Hello there  \nsecond line") == "Hello there"
    assert title_from("clear \x1b[2J\x1b]0;t\x07 now") == "clear ␛[2J␛]0;t␇ now"  # shown, never obeyed
    assert len(title_from("word " * 40)) == 60 and title_from("word " * 40).endswith("…")
