"""SVG snapshot of the sessions screen over a seeded history (fixed times, UTC), in the real app; 100 columns, so
the live dashboard (its own screen below 120) is not behind it.

Regenerate after a deliberate UI change:  python -m pytest tests/test_history_snapshots.py --snapshot-update
"""

from __future__ import annotations

import dataclasses
import time

import pytest

pytest.importorskip("pytest_textual_snapshot")

from textual.widgets import DataTable, Input, Static

from nanovllm_tui.app.app import NanoVllmApp
from nanovllm_tui.app.history.chat_history import ChatHistory
from nanovllm_tui.app.history.paths import resolve
from nanovllm_tui.app.history.records import MessageRecord, SessionRecord
from nanovllm_tui.app.history.store import HistoryStore
from nanovllm_tui.app.screens.sessions import SessionsScreen
from nanovllm_tui.app.session import SessionSettings
from nanovllm_tui.engine import LLM
from nanovllm_tui.engine.serving.thread_service import EngineService

T0 = 1_780_000_000.0
CHATS = [
    ("How does paged attention work?", ["How does paged attention work?", "Blocks of 16 tokens each."]),
    ("Prefix caching", ["What is a prefix-cache hit?", "A block whose hash is cached.", "And eviction?"]),
    ("Untitled [bold]markup[/bold] stays text", ["[red]not red[/red]"]),
]


@pytest.fixture
def app(tiny_qwen3_gqa_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    store = HistoryStore.open(tmp_path / "history.sqlite3")
    for i, (title, texts) in enumerate(CHATS):
        t = T0 + 3600 * i
        store.create_session(SessionRecord(f"u{i}", title, t, t, "tiny-qwen3"))
        for seq, text in enumerate(texts):
            role = "user" if seq % 2 == 0 else "assistant"
            store.add_message(f"u{i}", MessageRecord(role, text, seq=seq, created_at=t + 60 * seq))
    store.close()
    service = EngineService(LLM(str(tiny_qwen3_gqa_dir), kvcache_block_size=16, num_kvcache_blocks=64))
    app = NanoVllmApp(
        service,
        dataclasses.replace(service.engine_info(), model="tiny-qwen3"),
        owns_service=True,
        default_settings=SessionSettings(temperature=0.0, max_tokens=8),
        history=ChatHistory.open(resolve("history.sqlite3", False, {})),
        reopen=0,
    )
    app.animation_level = "none"
    yield app
    monkeypatch.delenv("TZ")
    time.tzset()


def test_sessions_screen(snap_compare, app):
    def listed(screen) -> bool:
        """Every chat in the table, its status line written and the saved reopen count in its field."""
        if not isinstance(screen, SessionsScreen) or screen.query_one(DataTable).row_count != len(CHATS):
            return False
        status = str(screen.query_one("#sessions-status", Static).render())
        return status.startswith(f"{len(CHATS)} chats") and screen.query_one("#sessions-reopen", Input).value == "3"

    async def run_before(pilot) -> None:
        await pilot.press("ctrl+o")
        deadline = time.monotonic() + 30
        while not listed(pilot.app.screen):
            if time.monotonic() > deadline:
                raise AssertionError(f"the sessions screen did not list the {len(CHATS)} saved chats in 30 s")
            await pilot.pause(0.05)
        for widget in pilot.app.screen.query(Input):
            widget.cursor_blink = False

    assert snap_compare(app, terminal_size=(100, 32), run_before=run_before)
