"""The watch view of `serve` under Textual's Pilot: a real thread EngineService (demo model) behind a real uvicorn
on a free port; a streamed request shows in the in-flight panel while it runs, then in the request log, and the
dashboard shows the served engine."""

from __future__ import annotations

import asyncio
import io
import json
import time

import httpx
from rich.console import Console
from textual.widgets import RichLog, Static

from nanovllm_tui.engine.serving.thread_service import EngineService
from nanovllm_tui.server.api import create_app
from nanovllm_tui.server.background import BackgroundServer
from nanovllm_tui.server.state import ServerState
from nanovllm_tui.server.watch import WatchApp

ENGINE = dict(device="cpu", max_model_len=256, kvcache_block_size=16, num_kvcache_blocks=64)


def plain(renderable) -> str:
    out = io.StringIO()
    Console(width=200, file=out, color_system=None).print(renderable)
    return out.getvalue()


def in_flight_text(app: WatchApp) -> str:
    return plain(app.query_one("#in-flight", Static).content)


def log_text(app: WatchApp) -> str:
    return "\n".join(strip.text for strip in app.query_one("#request-log", RichLog).lines)


async def wait_for(pilot, cond, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await pilot.pause(0.05)


def test_a_request_shows_in_flight_then_in_the_log(demo_model_dir):
    service = EngineService(str(demo_model_dir), **ENGINE)
    state = ServerState("demo")
    state.attach(service)
    server = BackgroundServer(create_app(state), "127.0.0.1", 0)
    server.start()
    app = WatchApp(state, service, server.url)
    body = {"prompt": "Count slowly:", "max_tokens": 40, "temperature": 0, "ignore_eos": True, "stream": True}

    async def run() -> None:
        async with app.run_test(size=(180, 50)) as pilot, httpx.AsyncClient(base_url=server.url, timeout=120) as c:
            assert "demo" in plain(app.query_one("#dash-header", Static).content)
            async with c.stream("POST", "/v1/completions", json=body) as r:
                lines = r.aiter_lines()
                first = json.loads((await anext(lines)).removeprefix("data: "))
                request_id = first["id"]
                await wait_for(pilot, lambda: request_id in in_flight_text(app), "the request in the in-flight panel")
                assert "running" in in_flight_text(app) or "waiting" in in_flight_text(app)
                async for _ in lines:  # read the stream to its end
                    pass
            await wait_for(pilot, lambda: request_id in log_text(app), "the request in the log")
            line = next(ln for ln in log_text(app).splitlines() if request_id in ln)
            assert "length" in line and "output 40" in line, line
            await wait_for(pilot, lambda: request_id not in in_flight_text(app), "the request to leave the panel")
            await wait_for(pilot, lambda: app.window.num_seen > 0, "engine steps on the dashboard")

    try:
        asyncio.run(run())
    finally:
        state.detach()
        server.stop()
        service.shutdown()
