"""Attach mode's app driven headless (App.run_test + Pilot) over RemoteService and a scripted server on
127.0.0.1: a chat answer streams in, the dashboard shows the remote figures without a block map, and a server
that goes away turns into a banner."""

from __future__ import annotations

import asyncio
import time

from remote_servers import ScriptedServer, fixture

from nanovllm_tui.app.session import SessionSettings
from nanovllm_tui.remote.app import AttachApp
from nanovllm_tui.remote.service import RemoteService


async def wait_for(pilot, check, timeout: float = 10.0) -> None:
    """Let the app run until `check()` holds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting on the app")
        await pilot.pause(0.05)


def test_chat_and_dashboard_then_banner():
    server = ScriptedServer(metrics=[fixture("vllm_metrics.txt"), fixture("vllm_metrics_next.txt")], token_delay=0.01)
    server.__enter__()
    service = RemoteService.connect(server.url, interval=0.05)
    app = AttachApp(service, owns_service=True, settings=SessionSettings(max_tokens=5))

    async def run() -> None:
        async with app.run_test(size=(160, 50)) as pilot:
            await pilot.press("h", "i", "enter")
            await wait_for(pilot, lambda: len(app.session.messages) == 2 and not app.session.busy)
            assert app.session.messages[-1] == {"role": "assistant", "content": "Hello there, friend."}
            assert server.requests[-1]["messages"][-1] == {"role": "user", "content": "hi"}
            text = lambda: app.dashboard.text.plain  # noqa: E731
            await wait_for(pilot, lambda: "43.8%" in text())  # the second scrape's KV usage, 0.4375
            shown = text()
            assert "remote server: no block map" in shown and "Qwen/Qwen3-0.6B" in shown
            assert "≈11,812 of 27,000 blocks of 16 tokens" in shown
            assert "not exported" not in shown
            server.__exit__(None, None, None)  # the server goes away
            await wait_for(pilot, lambda: "server unreachable" in text())
            assert "retrying in" in text()
            # A chat sent now ends with the reason, and the app keeps running.
            await pilot.press("a", "g", "a", "i", "n", "enter")
            await wait_for(pilot, lambda: not app.session.busy and len(app.session.messages) >= 3)
            answer = app.pane.answer
            assert answer is not None and answer.done and answer.text == ""

    asyncio.run(run())
    assert not service.is_running  # the app owned the service and shut it down
