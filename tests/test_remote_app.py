"""The app in attach mode: NanoVllmApp over a RemoteService, driven headless (App.run_test + Pilot) against a
scripted vLLM look-alike on 127.0.0.1. Chat tabs, settings, export and saved chats work as in the local app; the
engine-only controls are not offered; a server that goes away shows a banner on the main screen (even when the
dashboard is hidden) and coming back clears it; a revoked key and a server answering garbage are one line each."""

from __future__ import annotations

import asyncio
import time

from remote_servers import ScriptedServer, free_port
from textual.widgets import Input, Markdown, Static

from nanovllm_tui.app.app import NanoVllmApp
from nanovllm_tui.app.history.chat_history import ChatHistory
from nanovllm_tui.app.history.paths import resolve
from nanovllm_tui.app.history.store import HistoryStore
from nanovllm_tui.app.screens.dashboard import DashboardScreen
from nanovllm_tui.app.screens.help import HelpScreen
from nanovllm_tui.app.screens.settings import SettingsScreen
from nanovllm_tui.app.session import SessionSettings
from nanovllm_tui.app.widgets.banner import Banner
from nanovllm_tui.app.widgets.chat import AnswerView
from nanovllm_tui.app.widgets.dashboard import Dashboard
from nanovllm_tui.remote.backend import NOT_AVAILABLE
from nanovllm_tui.remote.dashboard import RemoteDashboard
from nanovllm_tui.remote.service import RemoteService

ANSWER = "Hello there, friend."  # the scripted server's answer at max_tokens=5
MODEL = "Qwen/Qwen3-0.6B"


def attached(
    url: str,
    *,
    history: ChatHistory | None = None,
    reopen: int = 0,
    settings: SessionSettings | None = None,
    **connect_kw,
) -> NanoVllmApp:
    """The app attached to `url` as `nanovllm-tui attach` runs it (it owns the service)."""
    connect_kw.setdefault("interval", 0.05)
    service = RemoteService.connect(url, **connect_kw)
    settings = settings or SessionSettings(max_tokens=5)
    return NanoVllmApp(service, owns_service=True, default_settings=settings, history=history, reopen=reopen)


async def wait_for(pilot, check, timeout: float = 15.0, what: str = "the app") -> None:
    """Let the app run until `check()` holds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


async def send(pilot, text: str) -> None:
    """Type into the active chat's prompt once it has the focus, and press Enter."""
    app = pilot.app
    await wait_for(pilot, lambda: (p := app.active_pane()) is not None and app.focused is p.prompt, what="focus")
    await pilot.press(*text, "enter")


def answered(app: NanoVllmApp, number: int, turns: int) -> bool:
    """Chat `number` is idle with `turns` messages, its last answer drawn in full."""
    s, pane = app.sessions.get(number), app.pane_of(number)
    if s is None or pane is None or s.busy or len(s.messages) != turns:
        return False
    answers = pane.query(AnswerView)
    return not answers or answers.last().done


def banner(app: NanoVllmApp) -> str | None:
    """The banner line on the main screen as drawn (None while it is hidden)."""
    widget = app.screen_stack[0].query_one(Banner)
    return str(widget.render()) if widget.display else None


def last_answer_line(app: NanoVllmApp, number: int) -> str:
    pane = app.pane_of(number)
    assert pane is not None
    answer = pane.query(AnswerView).last()
    assert answer.done
    return str(answer.query_one(".metrics", Static).render())


def test_chat_tabs_settings_and_export_over_http(tmp_path):
    with ScriptedServer(token_delay=0.01) as server:
        app = attached(server.url)

        async def run() -> None:
            async with app.run_test(size=(160, 50)) as pilot:
                await send(pilot, "hi")
                await pilot.press("ctrl+n")  # the app's new-chat key: a second tab
                await wait_for(pilot, lambda: 2 in app.sessions, what="the second tab")
                await send(pilot, "yo")
                await wait_for(pilot, lambda: answered(app, 1, 2) and answered(app, 2, 2), what="both answers")
                assert [app.sessions[n].messages[-1]["content"] for n in (1, 2)] == [ANSWER, ANSWER]
                assert sorted(r["messages"][-1]["content"] for r in server.requests) == ["hi", "yo"]
                # The settings screen edits this chat's sampling; its next request carries it.
                await pilot.press("f2")
                await wait_for(pilot, lambda: isinstance(app.screen, SettingsScreen), what="the settings")
                app.screen.query_one("#max_tokens", Input).value = "3"
                await pilot.press("ctrl+s")
                await wait_for(pilot, lambda: not isinstance(app.screen, SettingsScreen), what="settings saved")
                await send(pilot, "again")
                await wait_for(pilot, lambda: answered(app, 2, 4), what="the third answer")
                assert server.requests[-1]["max_tokens"] == 3
                assert app.sessions[2].messages[-1]["content"] == "Hello there,"
                paths = await app.history.export(directory=tmp_path)
                markdown = next(p for p in paths if p.suffix == ".md").read_text()
                assert "again" in markdown and "Hello there," in markdown

        asyncio.run(run())
    assert not app.service.is_running  # the app owned the service and shut it down


def test_engine_controls_are_not_offered():
    with ScriptedServer() as server:
        app = attached(server.url)

        async def run() -> None:
            async with app.run_test(size=(160, 50)) as pilot:
                await wait_for(pilot, lambda: "remote server: no block map" in side_text(app), what="the dashboard")
                assert not app.query(Dashboard)  # no engine dashboard (no block map to fake)
                keys = app.screen.active_bindings
                assert {"f2", "f3", "ctrl+n", "ctrl+o"} <= set(keys) and not {"f4", "f5"} & set(keys)
                titles = {c.title for c in app.get_system_commands(app.screen)}
                assert {"New chat", "Session settings", "Dashboard", "Saved chats"} <= titles
                assert not titles & {"Policy: mixed", "Policy: prefill_first", "Benchmark"}
                await pilot.press("f4", "f5")
                await pilot.pause(0.2)
                assert app.screen is app.screen_stack[0] and app.policy is None and app.window is None
                assert await app.run_action("set_policy('mixed')") is False
                await pilot.press("f1")
                await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), what="the help")
                assert NOT_AVAILABLE in (app.screen.query_one(Markdown).source or "")
                await pilot.press("escape", "f3")
                await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen), what="the dashboard screen")
                await wait_for(pilot, lambda: MODEL in side_text(app) and "usage" in side_text(app), what="figures")

        asyncio.run(run())


def side_text(app: NanoVllmApp) -> str:
    """The text of the remote dashboard on the current screen."""
    return app.screen.query_one(RemoteDashboard).text.plain


def test_saved_chats_come_back_on_the_next_attach(tmp_path):
    path = tmp_path / "h.sqlite3"
    with ScriptedServer() as server:
        for reopen in (0, 3):
            app = attached(server.url, history=ChatHistory.open(resolve(str(path), False, {})), reopen=reopen)

            async def run(app: NanoVllmApp = app, reopen: int = reopen) -> None:
                async with app.run_test(size=(160, 50)) as pilot:
                    if reopen == 0:
                        await send(pilot, "hi")
                        await wait_for(pilot, lambda: answered(app, 1, 2), what="the answer")
                    else:  # the chat is back in its tab, ready to go on
                        await wait_for(pilot, lambda: answered(app, 1, 2), what="the reopened chat")
                        assert app.sessions[1].messages[-1]["content"] == ANSWER
                        await send(pilot, "more")
                        await wait_for(pilot, lambda: answered(app, 1, 4), what="the answer after reopening")

            asyncio.run(run())
    store = HistoryStore.open(path)
    try:
        [record] = store.list_sessions()
        assert record.model == MODEL
        full = store.load(record.id)
        assert full is not None and [m.content for m in full.messages][-2:] == ["more", ANSWER]
    finally:
        store.close()


def test_server_down_shows_a_banner_then_recovers():
    port = free_port()
    server = ScriptedServer(port=port).__enter__()
    app = attached(server.url, max_backoff=0.2)

    async def run() -> None:
        async with app.run_test(size=(100, 40)) as pilot:  # narrow: the side dashboard is hidden
            await send(pilot, "hi")
            await wait_for(pilot, lambda: answered(app, 1, 2), what="the first answer")
            assert banner(app) is None and not app.query_one("#side-dashboard").display
            server.__exit__(None, None, None)
            await wait_for(pilot, lambda: "server unreachable" in (banner(app) or ""), what="the banner")
            line = banner(app) or ""
            assert "\n" not in line and f"127.0.0.1:{port}/metrics" in line and "retrying in" in line
            await send(pilot, "still there?")  # fails with one line; the chat keeps its text
            await wait_for(pilot, lambda: answered(app, 1, 3), what="the failed answer")
            error = last_answer_line(app, 1)
            assert error.startswith("error: ") and "\n" not in error and "/v1/chat/completions" in error
            assert [m["content"] for m in app.sessions[1].messages] == ["hi", ANSWER, "still there?"]
            with ScriptedServer(port=port):
                await wait_for(pilot, lambda: banner(app) is None, what="the banner to clear")
                await pilot.press("ctrl+r")  # ask again: the server answers now
                await wait_for(pilot, lambda: answered(app, 1, 4), what="the answer after recovery")
                assert app.sessions[1].messages[-1]["content"] == ANSWER

    asyncio.run(run())


def test_garbage_then_a_revoked_key_are_one_line_each():
    with ScriptedServer(api_key="old") as server:
        app = attached(server.url, api_key="old", max_backoff=0.2)

        async def run() -> None:
            async with app.run_test(size=(160, 50)) as pilot:
                await send(pilot, "hi")
                await wait_for(pilot, lambda: answered(app, 1, 2), what="the answer")
                server.garbage = True
                await wait_for(pilot, lambda: banner(app) is not None, what="the garbage banner")
                assert (banner(app) or "").startswith(f"⚠ bad response from {server.url}/metrics: not Prometheus text")
                server.garbage = False
                await wait_for(pilot, lambda: banner(app) is None, what="the banner to clear")
                server.api_key = "new"  # the server restarts with another key
                await wait_for(pilot, lambda: "401" in (banner(app) or ""), what="the 401 banner")
                assert (banner(app) or "").endswith("check the key passed with --api-key")
                await send(pilot, "hi again")
                await wait_for(pilot, lambda: answered(app, 1, 3), what="the refused answer")
                error = last_answer_line(app, 1)
                assert error.startswith("error: 401 Unauthorized") and error.endswith("--api-key")

        asyncio.run(run())
