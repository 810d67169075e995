"""The history's screens and actions in the real app (Pilot): the sessions screen (search, rename, open, delete),
the saved count of chats to reopen (and --reopen overriding it), export and copy, inert titles, and a history file
that cannot be used (history off, one line, file untouched)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from history_helpers import answered, history_app, notes, run, saved, send, start_service, tab_label, wait_for
from textual.widgets import DataTable, Input

from nanovllm_tui.app.app import NanoVllmApp
from nanovllm_tui.app.history.export import message_line, when
from nanovllm_tui.app.history.paths import REOPEN_SAVED
from nanovllm_tui.app.history.preferences import REOPEN_KEY
from nanovllm_tui.app.history.records import MessageRecord, SessionRecord
from nanovllm_tui.app.history.store import HistoryStore
from nanovllm_tui.app.screens.messages import MessagePicker
from nanovllm_tui.app.screens.sessions import ConfirmScreen, RenameScreen, SessionsScreen


@pytest.fixture(scope="module")
def service(tiny_qwen3_gqa_dir):
    svc = start_service(tiny_qwen3_gqa_dir)
    yield svc
    svc.shutdown()


@pytest.fixture
def make_app(service, tmp_path):
    def make(path: Path | None = None, reopen: int = 3, max_tokens: int = 10) -> NanoVllmApp:
        return history_app(service, path or tmp_path / "h.sqlite3", reopen, max_tokens)

    return make


def test_sessions_screen_search_rename_delete_open(make_app, tmp_path):
    store = HistoryStore.open(tmp_path / "h.sqlite3")  # an older chat, closed, to find and open
    store.create_session(SessionRecord("old", "About paging", 1.0, 1.0, "tiny"))
    store.add_message("old", MessageRecord("user", "explain the block table", created_at=2.0))
    store.close()

    async def scenario():
        app = make_app(reopen=0)
        async with app.run_test(size=(140, 44)) as pilot:
            await send(pilot, "zebra question")
            await answered(pilot, 1, 2)
            saved(app)
            await pilot.press("ctrl+o")
            await wait_for(pilot, lambda: isinstance(app.screen, SessionsScreen))
            screen = app.screen
            table = screen.query_one(DataTable)
            await wait_for(pilot, lambda: table.row_count == 2, what="both chats listed")
            await pilot.press(*"BLOCK TABLE")  # message text, any case
            await wait_for(pilot, lambda: table.row_count == 1 and screen.records[0].uid == "old", what="search")
            await pilot.press("f2")  # rename it
            await wait_for(pilot, lambda: isinstance(app.screen, RenameScreen))
            app.screen.query_one(Input).value = "Paging, renamed"
            await pilot.press("enter")
            await wait_for(pilot, lambda: screen.records and screen.records[0].title == "Paging, renamed")
            await pilot.press("enter")  # open it in a tab
            await wait_for(pilot, lambda: len(app.sessions) == 2, what="the old chat opened")
            assert app.sessions[2].messages == [{"role": "user", "content": "explain the block table"}]
            await wait_for(pilot, lambda: tab_label(app, 2) == "Paging, renamed")
            # Delete: refused while the chat is open in a tab, done after a confirmation once it is closed.
            await pilot.press("ctrl+o")
            await wait_for(pilot, lambda: isinstance(app.screen, SessionsScreen))
            screen = app.screen
            await pilot.press(*"zebra")
            await wait_for(pilot, lambda: screen.query_one(DataTable).row_count == 1 and screen.records[0].uid != "old")
            await pilot.press("f8")
            assert "close its tab first" in str(screen.query_one("#sessions-status").render())
            await pilot.press("escape")
            await wait_for(pilot, lambda: not isinstance(app.screen, SessionsScreen))
            await pilot.press("alt+1")
            await app.action_close_session()  # (ctrl+w deletes a word while the prompt has the focus)
            await wait_for(pilot, lambda: list(app.sessions) == [2], what="chat 1 closed")
            await pilot.press("ctrl+o")
            await wait_for(pilot, lambda: isinstance(app.screen, SessionsScreen))
            screen = app.screen
            await pilot.press(*"zebra")
            await wait_for(pilot, lambda: screen.query_one(DataTable).row_count == 1)
            await pilot.press("f8")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("y")
            await wait_for(pilot, lambda: screen.query_one(DataTable).row_count == 0, what="deleted")
            await pilot.press("escape")
            assert [r.title for r in saved(app)] == ["Paging, renamed"]

    run(scenario())


def test_reopen_count_is_saved_on_the_sessions_screen_and_the_flag_overrides_it(make_app, tmp_path):
    path = tmp_path / "h.sqlite3"
    store = HistoryStore.open(path)
    for i in range(4):  # four chats left open, chat 3 the most recent
        store.create_session(SessionRecord(f"u{i}", f"open chat {i}", 1.0 + i, 1.0 + i, "tiny", is_open=True))
        store.add_message(f"u{i}", MessageRecord("user", f"question {i}", created_at=10.0 + i))
    store.close()

    async def flag_run() -> None:  # --reopen 2 this run; the screen saves 1 for the runs after
        app = make_app(reopen=2)
        async with app.run_test(size=(140, 44)) as pilot:
            await wait_for(pilot, lambda: len(app.sessions) == 2, what="two chats reopened")
            await pilot.press("ctrl+o")
            await wait_for(pilot, lambda: isinstance(app.screen, SessionsScreen))
            screen = app.screen
            field = screen.query_one("#sessions-reopen", Input)
            await wait_for(pilot, lambda: field.value == "3", what="the default count shown (none saved yet)")
            await pilot.press("tab")  # from the search box to the count
            assert app.focused is field
            await pilot.press("backspace", "x", "1")  # digits only
            assert field.value == "1"
            await wait_for(pilot, lambda: screen.reopen_saved == 1, what="the count saved")
            status = str(screen.query_one("#sessions-status").render())
            assert status == "saved: reopen the 1 most recent open chat at start (this run: --reopen 2)"
            await pilot.press("enter")  # moves to the list, opens nothing
            assert isinstance(app.focused, DataTable) and app.screen is screen
            await pilot.press("escape")

    async def saved_run() -> None:  # no --reopen: the saved count
        app = make_app(reopen=REOPEN_SAVED)
        async with app.run_test(size=(140, 44)) as pilot:
            await wait_for(pilot, lambda: app.pane_of(1) is not None and app.pane_of(1).is_mounted)
            assert list(app.sessions) == [1]
            assert app.sessions[1].messages == [{"role": "user", "content": "question 3"}]
            await pilot.press("ctrl+o")
            await wait_for(pilot, lambda: isinstance(app.screen, SessionsScreen))
            field = app.screen.query_one("#sessions-reopen", Input)
            await wait_for(pilot, lambda: field.value == "1", what="the saved count shown")

    run(flag_run())
    check = HistoryStore.open(path)
    assert check.preference(REOPEN_KEY) == "1"
    check.close()
    run(saved_run())


def test_export_and_copy(make_app, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    async def scenario():
        app = make_app(max_tokens=6)
        async with app.run_test(size=(140, 44)) as pilot:
            await send(pilot, "Sort a list?")
            await answered(pilot, 1, 2)
            answer_text = app.sessions[1].messages[1]["content"]
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: len(list(tmp_path.glob("chat-1-*"))) == 2, what="the exports")
            (record,) = saved(app)
            md = (tmp_path / "chat-1-sort-a-list.md").read_text()
            assert md == (
                f"# Sort a list?\n\n- session: 1\n- model: tiny-qwen3\n"
                f"- created: {when(record.created_at)} · updated: {when(record.updated_at)}\n"
                "- settings: temperature 0 · top_p 0.95 · top_k -1 · min_p 0 · repetition_penalty 1 · "
                "presence_penalty 0 · frequency_penalty 0 · max_tokens 6 · seed none · thinking on\n\n"
                "## System\n\nYou are a helpful assistant.\n\n## User\n\nSort a list?\n\n"
                f"## Assistant\n\n{answer_text}\n\n*{message_line(record.messages[1])}*\n"
            )
            assert "6 tokens" in message_line(record.messages[1])
            assert json.loads((tmp_path / "chat-1-sort-a-list.json").read_text()) == {
                "model": "tiny-qwen3",
                "messages": [
                    {"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": "Sort a list?"},
                    {"role": "assistant", "content": answer_text},
                ],
                "temperature": 0.0,
                "top_p": 0.95,
                "min_p": 0.0,
                "repetition_penalty": 1.0,
                "presence_penalty": 0.0,
                "frequency_penalty": 0.0,
                "max_tokens": 6,
            }
            await pilot.press("ctrl+y")  # the last answer
            assert app.clipboard == answer_text
            await pilot.press("f8")  # a chosen message: the question
            await wait_for(pilot, lambda: isinstance(app.screen, MessagePicker))
            await pilot.press("up", "enter")
            await wait_for(pilot, lambda: app.clipboard == "Sort a list?", what="the question copied")

    run(scenario())


def test_titles_from_hostile_text_are_inert(make_app):
    async def scenario():
        app = make_app(max_tokens=4)
        async with app.run_test(size=(140, 44)) as pilot:
            await app.pane_of(1).send("clear \x1b[2J\x1b]0;t\x07 now")
            await answered(pilot, 1, 2)
            await wait_for(pilot, lambda: tab_label(app, 1) == "clear ␛[2J␛]0;t␇ now", what="an inert tab title")
            (record,) = saved(app)
            assert record.title == "clear ␛[2J␛]0;t␇ now"
            assert record.messages[0].content == "clear \x1b[2J\x1b]0;t\x07 now"  # the text itself is kept as sent

    run(scenario())


@pytest.mark.parametrize("kind", ["garbage", "newer"])
def test_unusable_history_file_turns_history_off_with_one_line(make_app, tmp_path, kind):
    path = tmp_path / "h.sqlite3"
    if kind == "garbage":
        path.write_bytes(b"not a database\n" * 300)
    else:
        conn = sqlite3.connect(path)
        conn.executescript("CREATE TABLE future (x); PRAGMA user_version = 42;")
        conn.close()
    before = path.read_bytes()

    async def scenario():
        app = make_app(path)
        async with app.run_test(size=(140, 44)) as pilot:
            await wait_for(pilot, lambda: any("history is off" in n for n in notes(app)), what="the notice")
            (line,) = [n for n in notes(app) if "history is off" in n]
            assert "\n" not in line and str(path) in line and "left as it is" in line
            assert ("newer than" in line) == (kind == "newer")
            await send(pilot, "still works")  # chats work, in memory
            await answered(pilot, 1, 2)
            await pilot.press("ctrl+o")
            await wait_for(pilot, lambda: isinstance(app.screen, SessionsScreen))
            status = app.screen.query_one("#sessions-status")
            await wait_for(pilot, lambda: "history is off" in str(status.render()), what="the screen says why")

    run(scenario())
    assert path.read_bytes() == before
