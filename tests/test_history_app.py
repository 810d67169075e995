"""Saved chats in the real app (App.run_test + Pilot, a real engine over a tiny Qwen3, a real SQLite file): chat,
quit, restart and the chat is back with its settings; answers saved with their outcome and timings, stopped and
regenerated, or failed after some text (an injected engine fault); kill -9 while an answer streams; two apps on one
file."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from history_helpers import (
    answered,
    history_app,
    notes,
    run,
    saved,
    send,
    start_service,
    tab_label,
    tiny_llm,
    wait_for,
)
from textual.widgets import Input, TextArea

from nanovllm_tui.app.app import NanoVllmApp
from nanovllm_tui.app.history.chat_history import ChatHistory
from nanovllm_tui.app.history.panes import SystemPromptView
from nanovllm_tui.app.history.paths import resolve
from nanovllm_tui.app.screens.settings import SettingsScreen
from nanovllm_tui.app.session import SessionSettings
from nanovllm_tui.app.widgets.chat import AnswerView, UserMessage
from nanovllm_tui.engine.serving.thread_service import EngineService


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


PENALTIES = {"repetition_penalty": 1.3, "presence_penalty": 0.5, "frequency_penalty": 0.25, "min_p": 0.05}


def test_chat_quit_restart_brings_the_chat_back(make_app):
    async def first_run() -> tuple[list, SessionSettings]:
        app = make_app()
        async with app.run_test(size=(140, 44)) as pilot:
            await pilot.press("f2")
            await wait_for(pilot, lambda: isinstance(app.screen, SettingsScreen))
            app.screen.query_one("#system-prompt", TextArea).text = "Answer in one line."
            app.screen.query_one("#max_tokens", Input).value = "9"
            for field, value in PENALTIES.items():
                app.screen.query_one(f"#{field}", Input).value = str(value)
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
    assert {field: getattr(settings, field) for field in PENALTIES} == PENALTIES  # and second_run got them back
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


def test_answer_failing_after_some_text_is_saved_partial_and_failed(tiny_qwen3_gqa_dir, tmp_path):
    llm = tiny_llm(tiny_qwen3_gqa_dir)  # its own engine: the fault is injected into it
    real_launch = llm.model_runner.launch

    def launch(items, *args):
        if any(seq.num_completion_tokens >= 5 for seq, _ in items):
            raise RuntimeError("injected: the device fell off")
        return real_launch(items, *args)

    llm.model_runner.launch = launch
    path = tmp_path / "h.sqlite3"

    async def first_run() -> str:
        app = history_app(svc, path, max_tokens=40)
        async with app.run_test(size=(140, 44)) as pilot:
            await send(pilot, "fail midway")
            await answered(pilot, 1, 2)
            partial = app.sessions[1].messages[1]["content"]
            assert partial  # some text came before the fault
            pane = app.pane_of(1)
            assert pane is not None
            metrics = str(pane.query_one(AnswerView).query_one(".metrics").render())
            assert "error: " in metrics and "injected: the device fell off" in metrics
            (record,) = saved(app)
            answer = record.messages[1]
            assert (answer.status, answer.finish_reason, answer.content) == ("failed", "error", partial)
            assert answer.error is not None and "injected: the device fell off" in answer.error
            assert answer.completion_tokens is not None and 0 < answer.completion_tokens < 40
            return partial

    async def second_run(partial: str) -> None:
        app = history_app(svc, path)
        async with app.run_test(size=(140, 44)) as pilot:
            await wait_for(pilot, lambda: (p := app.pane_of(1)) is not None and p.is_mounted)
            pane = app.pane_of(1)
            assert pane is not None
            await wait_for(pilot, lambda: len(pane.query(AnswerView)) == 1, what="the saved answer")
            assert app.sessions[1].messages[1] == {"role": "assistant", "content": partial}  # still in context
            answer = pane.query_one(AnswerView)
            await wait_for(pilot, lambda: answer.done, what="the saved answer drawn")
            assert answer.text == partial and "failed: " in str(answer.query_one(".metrics").render())

    with EngineService(llm) as svc:
        partial = asyncio.run(first_run())
        run(second_run(partial))


APP_CHILD = """
import asyncio, dataclasses, os, sqlite3, sys, time
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
        # The kill must come after the question is committed: watch the file through a connection of our own.
        reader = sqlite3.connect(sys.argv[2])
        deadline = time.monotonic() + 60
        while not reader.execute("SELECT 1 FROM messages WHERE content = 'second question'").fetchone():
            if time.monotonic() > deadline:
                sys.exit("the second question never reached the history file")
            await pilot.pause(0.02)
        reader.close()
        line = "STREAMING " + session.messages[1]["content"] + "\\n"
        os.write(1, line.encode())  # not print(): Textual captures sys.stdout while the app runs
        await asyncio.sleep(600)

asyncio.run(main())
"""


def test_kill_9_while_an_answer_streams_keeps_every_completed_message(make_app, tiny_qwen3_gqa_dir, tmp_path):
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


def test_a_second_app_on_the_same_file_works_and_leaves_the_first_ones_chats(make_app, tmp_path):
    from nanovllm_tui.app.history.records import MessageRecord, SessionRecord

    first = ChatHistory.open(resolve(str(tmp_path / "h.sqlite3"), False, {}))  # a running app holds the file
    assert first.writer is not None

    def seed(store) -> None:
        store.create_session(SessionRecord("first", "open in the first app", 1.0, 1.0, "tiny", is_open=True))
        store.add_message("first", MessageRecord("user", "hello from the first", created_at=2.0))

    first.writer.submit(seed).result(10)

    async def scenario():
        app = make_app()
        async with app.run_test(size=(140, 44)) as pilot:
            await wait_for(pilot, lambda: any("another nanovllm-tui is using it" in n for n in notes(app)))
            assert list(app.sessions) == [1] and app.sessions[1].messages == []  # the first app's chat stays there
            await send(pilot, "from the second")
            await answered(pilot, 1, 2)
            assert sorted(r.title for r in saved(app)) == ["from the second", "open in the first app"]

    try:
        run(scenario())
        titles = first.writer.submit(lambda store: [r.title for r in store.list_sessions()]).result(10)
        assert sorted(titles) == ["from the second", "open in the first app"]  # the first app sees it too
    finally:
        first.close()
