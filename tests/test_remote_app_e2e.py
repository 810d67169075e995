"""The attached app end to end (slow): `nanovllm-tui serve --headless` (demo model, CPU) in a subprocess on a fixed
port, NanoVllmApp attached to it over HTTP and driven with Pilot. Two chat tabs stream answers; the dashboard's
figures match the server's /metrics read directly; killing the server shows the banner, and starting it again on
the same port clears the banner and the chat answers again."""

from __future__ import annotations

import asyncio

import pytest
from remote_servers import free_port
from test_remote_app import answered, attached, banner, last_answer_line, send, wait_for
from test_remote_e2e import scrape, wait_until
from test_remote_panels import dashboard_text, rows
from test_serve import ENGINE_FLAGS, ServerProcess

from nanovllm_tui.app.session import SessionSettings

KEY = "attach-key"
SETTINGS = SessionSettings(temperature=0.0, max_tokens=24)


class RestartableServer:
    """`serve` on one port that a test can kill (SIGKILL) and start again on that same port."""

    def __init__(self, model_dir: str):
        self.model_dir = model_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: ServerProcess | None = None

    def start(self) -> None:
        """Start and wait until the engine is ready (the last --port wins over ServerProcess's --port 0)."""
        flags = ["--served-model-name", "demo", "--api-key", KEY, *ENGINE_FLAGS, "--port", str(self.port)]
        self.proc = ServerProcess("--model", self.model_dir, *flags)
        self.proc.wait_for(r"engine ready", 300)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.proc.kill()
        self.proc.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


@pytest.fixture(scope="module")
def server(demo_model_dir):
    srv = RestartableServer(str(demo_model_dir))
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()


def expected_rows(before: dict[str, float], after: dict[str, float], interval: float) -> dict[str, str]:
    """What each dashboard row must end with, from two direct scrapes around the chats (the server idle at both)."""

    def delta(name: str) -> float:
        return after[name] - before[name]

    hits, queries = delta("vllm:prefix_cache_hits_total"), delta("vllm:prefix_cache_queries_total")
    steps = delta("vllm:iteration_tokens_total_count")
    assert queries > 0 and steps > 0 and delta("vllm:time_to_first_token_seconds_count") == 2
    return {
        "usage": f"{after['vllm:kv_cache_usage_perc']:.1%}",
        "hit rate": f" {hits / queries:.1%}",
        "running": f" {after['vllm:num_requests_running']:.0f}",
        "waiting": f" {after['vllm:num_requests_waiting']:.0f}",
        "preempted": f" {delta('vllm:num_preemptions_total'):.0f} /poll",
        "generate": f" {delta('vllm:generation_tokens_total') / interval:,.0f} tok/s",
        "prefill": f" {delta('vllm:prompt_tokens_total') / interval:,.0f} tok/s",
        "tok/step": f" {delta('vllm:iteration_tokens_total_sum') / steps:,.1f}",
    }


@pytest.mark.slow
def test_two_tabs_stream_and_the_dashboard_matches_the_metrics(server):
    app = attached(server.url, api_key=KEY, interval=60.0, settings=SETTINGS)  # the test takes scrapes 2 and 3

    async def run() -> None:
        async with app.run_test(size=(160, 50)) as pilot:
            await wait_for(pilot, lambda: app.service.snapshot() is not None, 30, "the first scrape")
            await asyncio.to_thread(app.service.poller.poll_once)
            before = await asyncio.to_thread(scrape, server.url)
            await send(pilot, "Name a colour.")
            await pilot.press("ctrl+n")  # a second tab, sent while the first may still stream
            await wait_for(pilot, lambda: 2 in app.sessions, what="the second tab")
            await send(pilot, "Count to five.")
            await wait_for(pilot, lambda: answered(app, 1, 2) and answered(app, 2, 2), 300, "both answers")
            assert all(app.sessions[n].messages[-1]["content"] for n in (1, 2))
            assert all(last_answer_line(app, n).startswith("TTFT") for n in (1, 2))
            idle = lambda: (s := scrape(server.url))["vllm:num_requests_running"] == 0 and s  # noqa: E731
            await asyncio.to_thread(wait_until, idle, 30, "an idle server")
            snap = await asyncio.to_thread(app.service.poller.poll_once)
            after = await asyncio.to_thread(scrape, server.url)
            assert snap.interval is not None
            want = expected_rows(before, after, snap.interval)
            drawn = lambda: rows(dashboard_text(app)).get("generate", "").endswith(want["generate"])  # noqa: E731
            await wait_for(pilot, drawn, 10, "the scrape drawn")
            shown = rows(dashboard_text(app))
            assert {label: shown[label][-len(end) :] for label, end in want.items()} == want
            ttft = shown["TTFT"].split(" / ")
            assert len(ttft) == 3 and all(v.endswith(" ms") for v in ttft)

    asyncio.run(run())


@pytest.mark.slow
def test_killing_the_server_shows_the_banner_and_a_restart_recovers(server):
    app = attached(server.url, api_key=KEY, interval=0.2, max_backoff=1.0, settings=SETTINGS)

    async def run() -> None:
        async with app.run_test(size=(160, 50)) as pilot:
            await send(pilot, "Say hi.")
            await wait_for(pilot, lambda: answered(app, 1, 2), 300, "the first answer")
            first = app.sessions[1].messages[-1]["content"]
            await asyncio.to_thread(server.kill)
            await wait_for(pilot, lambda: "server unreachable" in (banner(app) or ""), 30, "the banner")
            await send(pilot, "Are you there?")
            await wait_for(pilot, lambda: answered(app, 1, 3), 30, "the failed answer")
            assert last_answer_line(app, 1).startswith("error: ")
            assert [m["content"] for m in app.sessions[1].messages] == ["Say hi.", first, "Are you there?"]
            await asyncio.to_thread(server.start)  # the same port; the UI keeps ticking meanwhile
            await wait_for(pilot, lambda: banner(app) is None, 60, "the banner to clear")
            await pilot.press("ctrl+r")  # ask again: the restarted server answers
            await wait_for(pilot, lambda: answered(app, 1, 4), 300, "the answer after the restart")
            assert app.sessions[1].messages[-1]["content"] and last_answer_line(app, 1).startswith("TTFT")

    asyncio.run(run())
