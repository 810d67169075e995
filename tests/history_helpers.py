"""Shared by the history Pilot tests: an app over a shared engine with a history file, and waits on its state."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

from nanovllm_tui.app.app import NanoVllmApp
from nanovllm_tui.app.history.chat_history import ChatHistory
from nanovllm_tui.app.history.paths import resolve
from nanovllm_tui.app.session import SessionSettings
from nanovllm_tui.engine import LLM
from nanovllm_tui.engine.serving.thread_service import EngineService


def tiny_llm(model_dir: Path) -> LLM:
    """The tiny engine the history tests chat with."""
    return LLM(str(model_dir), kvcache_block_size=16, max_model_len=1024, num_kvcache_blocks=128)


def start_service(model_dir: Path) -> EngineService:
    """One engine for the apps of a module (they do not own it: a restart is about the history, not the engine)."""
    return EngineService(tiny_llm(model_dir))


def history_app(service: EngineService, path: Path, reopen: int = 3, max_tokens: int = 10) -> NanoVllmApp:
    """An app whose history is the file at `path`, reopening up to `reopen` chats."""
    return NanoVllmApp(
        service,
        dataclasses.replace(service.engine_info(), model="tiny-qwen3"),
        default_settings=SessionSettings(temperature=0.0, max_tokens=max_tokens),
        history=ChatHistory.open(resolve(str(path), False, {})),
        reopen=reopen,
    )


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
    """Wait for `turns` turns in chat `number` and its last answer drawn in full (leaving the app while an answer
    is still being drawn would tear its widgets down under it)."""
    app = pilot.app

    def done() -> bool:
        session, pane = app.sessions[number], app.pane_of(number)
        drawn = pane is not None and (pane.answer is None or pane.answer.done)
        return not session.busy and len(session.messages) == turns and drawn

    await wait_for(pilot, done, what=f"{turns} turns in chat {number}")


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
