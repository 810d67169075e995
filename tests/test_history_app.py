"""Saved chats in the real app (App.run_test + Pilot, a real engine over a tiny Qwen3, a real SQLite file): chat,
quit, restart and the chat is back; stop, regenerate, search, rename, delete, export, copy; a history file that
cannot be used turns history off with one line."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from pathlib import Path

import pytest
from textual.widgets import DataTable, Input, TextArea

from nanovllm_tui.app.app import NanoVllmApp
from nanovllm_tui.app.history.chat_history import ChatHistory
from nanovllm_tui.app.history.export import message_line, when
from nanovllm_tui.app.history.panes import SystemPromptView
from nanovllm_tui.app.history.paths import resolve
from nanovllm_tui.app.history.store import HistoryStore
from nanovllm_tui.app.screens.messages import MessagePicker
from nanovllm_tui.app.screens.sessions import ConfirmScreen, RenameScreen, SessionsScreen
from nanovllm_tui.app.screens.settings import SettingsScreen
from nanovllm_tui.app.session import SessionSettings
from nanovllm_tui.app.widgets.chat import AnswerView, UserMessage
from nanovllm_tui.engine import LLM
from nanovllm_tui.engine.serving.thread_service import EngineService


@pytest.fixture(scope="module")
def service(tiny_qwen3_gqa_dir):
    """One engine for every app here (the apps do not own it: a restart is about the history, not the engine)."""
    llm = LLM(str(tiny_qwen3_gqa_dir), kvcache_block_size=16, max_model_len=1024, num_kvcache_blocks=128)
    svc = EngineService(llm)
    yield svc
    svc.shutdown()


@pytest.fixture
def make_app(service, tmp_path):
    """An app whose history is `path` (tmp_path/h.sqlite3 by default), reopening up to `reopen` chats."""

    def make(path: Path | None = None, reopen: int = 3, max_tokens: int = 10) -> NanoVllmApp:
        history = ChatHistory.open(resolve(str(path or tmp_path / "h.sqlite3"), False, {}))
        return NanoVllmApp(
            service,
            dataclasses.replace(service.engine_info(), model="tiny-qwen3"),
            default_settings=SessionSettings(temperature=0.0, max_tokens=max_tokens),
            history=history,
            reopen=reopen,
        )

    return make


async def wait_for(pilot, cond, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            chats = {n: (s.busy, s.messages) for n, s in pilot.app.sessions.items()}
            raise AssertionError(f"timed out waiting for {what}; chats {chats}")
        await pilot.pause(0.02)


async def send(pilot, text: str) -> None:
    app = pilot.app
    await wait_for(pilot, lambda: app.active_pane() is not None and app.focused is app.active_pane().prompt)
    keys = [key for line in text.split("\n") for key in (*line, "ctrl+j")][:-1]  # ctrl+j: a newline
    await pilot.press(*keys, "enter")


async def answered(pilot, number: int, turns: int) -> None:
    app = pilot.app
    await wait_for(
        pilot,
        lambda: not app.sessions[number].busy and len(app.sessions[number].messages) == turns,
        what=f"{turns} turns in chat {number}",
    )


def saved(app: NanoVllmApp):
    """The history as the store sees it once the writer has caught up."""
    writer = app.history.history.writer
    assert writer is not None and writer.flush(10)
    return writer.submit(lambda store: [store.load(r.id) for r in store.list_sessions()]).result(10)


def tab_label(app: NanoVllmApp, number: int) -> str:
    return app.screen_stack[0].query_one("#sessions").get_tab(f"session-{number}").label_text


def notes(app: NanoVllmApp) -> list[str]:
    return [n.message for n in app._notifications]


def run(coro) -> None:
    asyncio.run(coro)


def test_chat_quit_restart_brings_the_chat_back(make_app):
    async def first_run() -> tuple[list, SessionSettings]:
        app = make_app()
        async with app.run_test(size=(140, 44)) as pilot:
            await pilot.press("f2")
            await wait_for(pilot, lambda: isinstance(app.screen, SettingsScreen))
            app.screen.query_one("#system-prompt", TextArea).text = "Answer in one line."
            app.screen.query_one("#max_tokens", Input).value = "9"
            await pilot.press("ctrl+s")
            await send(pilot, "What is a KV cache?\nSecond line")
            await answered(pilot, 1, 2)
            await wait_for(pilot, lambda: tab_label(app, 1) == "What is a KV cache?", what="the tab title")
            view = app.pane_of(1).query_one(SystemPromptView)
            assert view.display and view.prompt == "Answer in one line."
            return list(app.sessions[1].messages), app.sessions[1].settings

    async def second_run(messages: list, settings: SessionSettings) -> None:
        app = make_app()
        async with app.run_test(size=(140, 44)) as pilot:
            await wait_for(pilot, lambda: app.pane_of(1) is not None and app.pane_of(1).is_mounted)
            assert list(app.sessions) == [1]  # the saved chat, no extra empty one
            session = app.sessions[1]
            assert session.messages == messages and session.settings == settings
            pane = app.pane_of(1)
            await wait_for(pilot, lambda: len(pane.query(AnswerView)) == 1, what="the saved answer drawn")
            assert [w.text for w in pane.query(UserMessage)] == ["What is a KV cache?\nSecond line"]
            answer = pane.query_one(AnswerView)
            assert answer.done and answer.text == messages[1]["content"]
            assert pane.query_one(SystemPromptView).prompt == "Answer in one line."
            await wait_for(pilot, lambda: tab_label(app, 1) == "What is a KV cache?", what="the tab title")
            # The chat goes on where it stopped: the next question is saved after the old turns.
            await send(pilot, "And prefix caching?")
            await answered(pilot, 1, 4)
            (record,) = saved(app)
            assert [m.content for m in record.messages] == [m["content"] for m in session.messages]
            assert [m.seq for m in record.messages] == [0, 1, 2, 3]

    messages, settings = asyncio.run(first_run())
    assert settings.system_prompt == "Answer in one line." and settings.max_tokens == 9
    run(second_run(messages, settings))


def test_answers_saved_with_outcome_timings_stop_and_regenerate(make_app):
    async def scenario():
        app = make_app(max_tokens=8)
        async with app.run_test(size=(140, 44)) as pilot:
            await send(pilot, "hello")
            await answered(pilot, 1, 2)
            (record,) = saved(app)
            answer = record.messages[1]
            assert (answer.role, answer.status, answer.finish_reason) == ("assistant", "complete", "length")
            assert answer.completion_tokens == 8 and answer.ttft is not None and answer.ttft > 0
            assert answer.tok_s is not None and answer.prompt_tokens is not None and answer.prompt_tokens > 2
            await pilot.press("ctrl+r")  # regenerate: the saved answer is replaced, not added
            await answered(pilot, 1, 2)
            (record,) = saved(app)
            assert [m.role for m in record.messages] == ["user", "assistant"]
            assert record.messages[1].content == app.sessions[1].messages[1]["content"]
            # A stopped answer is saved with its partial text, marked stopped.
            app.sessions[1].settings.max_tokens = 900
            await send(pilot, "a long one")
            session = app.sessions[1]
            await wait_for(pilot, lambda: session.handle is not None and session.handle.text, what="streaming")
            await pilot.press("escape")
            await answered(pilot, 1, 4)
            (record,) = saved(app)
            stopped = record.messages[3]
            assert (stopped.status, stopped.finish_reason) == ("stopped", "abort")
            assert stopped.content == session.messages[3]["content"] and stopped.content

    run(scenario())


def test_sessions_screen_search_rename_delete_open(make_app, tmp_path):
    store = HistoryStore.open(tmp_path / "h.sqlite3")  # an older chat, closed, to find and open
    from nanovllm_tui.app.history.records import MessageRecord, SessionRecord

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
                "- settings: temperature 0 · top_p 0.95 · top_k -1 · max_tokens 6 · seed none · thinking on\n\n"
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
        import sqlite3

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
            await send(pilot, "still works")  # chats work, in memory
            await answered(pilot, 1, 2)
            await pilot.press("ctrl+o")
            await wait_for(pilot, lambda: isinstance(app.screen, SessionsScreen))
            status = app.screen.query_one("#sessions-status")
            await wait_for(pilot, lambda: "history is off" in str(status.render()), what="the screen says why")

    run(scenario())
    assert path.read_bytes() == before


APP_CHILD = """
import asyncio, dataclasses, os, sys, time
from nanovllm_tui.app.app import NanoVllmApp
from nanovllm_tui.app.history.chat_history import ChatHistory
from nanovllm_tui.app.history.paths import resolve
from nanovllm_tui.app.session import SessionSettings
from nanovllm_tui.engine import LLM
from nanovllm_tui.engine.serving.thread_service import EngineService

async def main():
    service = EngineService(LLM(sys.argv[1], kvcache_block_size=16, max_model_len=1024, num_kvcache_blocks=128))
    app = NanoVllmApp(
        service,
        dataclasses.replace(service.engine_info(), model="tiny-qwen3"),
        owns_service=True,
        default_settings=SessionSettings(temperature=0.0, max_tokens=8),
        history=ChatHistory.open(resolve(sys.argv[2], False, {})),
    )
    async with app.run_test(size=(120, 40)) as pilot:
        session = app.sessions[1]
        for text, until in (("first question", lambda: len(session.messages) == 2 and not session.busy),
                            ("second question", lambda: session.handle is not None and session.handle.text)):
            if text == "second question":
                session.settings.max_tokens = 600  # long enough to be killed mid-answer
            app.pane_of(1).prompt.text = text
            app.pane_of(1).prompt.action_send()
            deadline = time.monotonic() + 120
            while not until():
                if time.monotonic() > deadline:
                    sys.exit(f"stuck after {text!r}: {session.messages}")
                await pilot.pause(0.02)
        await pilot.pause(0.3)  # a few timer ticks: the question is handed to the writer
        await asyncio.to_thread(app.history.history.writer.flush, 10)
        line = "STREAMING " + session.messages[1]["content"] + "\\n"
        os.write(1, line.encode())  # not print(): Textual captures sys.stdout while the app runs
        await asyncio.sleep(600)

asyncio.run(main())
"""


def test_kill_9_while_an_answer_streams_keeps_every_completed_message(make_app, tiny_qwen3_gqa_dir, tmp_path):
    import os
    import signal
    import sqlite3
    import subprocess
    import sys

    path = tmp_path / "h.sqlite3"
    child = subprocess.Popen(
        [sys.executable, "-c", APP_CHILD, str(tiny_qwen3_gqa_dir), str(path)],
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.startswith("STREAMING "), line
        first_answer = line.removeprefix("STREAMING ").rstrip("\n")
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(60)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()

    async def restart():
        app = make_app()
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: app.pane_of(1) is not None and len(app.pane_of(1).query(UserMessage)) == 2)
            assert app.sessions[1].messages == [
                {"role": "user", "content": "first question"},
                {"role": "assistant", "content": first_answer},
                {"role": "user", "content": "second question"},
            ]
            await send(pilot, "third question")  # the chat goes on
            await answered(pilot, 1, 5)

    run(restart())
