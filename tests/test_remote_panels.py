"""Every panel of the attached app's dashboard (side and full screen) against the vLLM /metrics fixtures, current
and older metric names, served by a real HTTP server on 127.0.0.1: the figures drawn are the hand-computed ones of
tests/test_remote_metrics.py, and a metric the server does not export says so instead of showing a number."""

from __future__ import annotations

import asyncio
import re

import pytest
from remote_servers import ScriptedServer, fixture
from test_remote_app import attached, wait_for
from test_remote_metrics import FIXTURES, ITL, TTFT

from nanovllm_tui.app.app import NanoVllmApp
from nanovllm_tui.app.render import TICKS
from nanovllm_tui.app.screens.dashboard import DashboardScreen
from nanovllm_tui.remote.dashboard import LABEL, NOT_EXPORTED, RemoteDashboard


def rows(text: str) -> dict[str, str]:
    """The dashboard's figure rows by label (a label column of LABEL cells, then sparkline and value)."""
    return {line[:LABEL].strip(): line[LABEL:] for line in text.splitlines() if line[:LABEL].strip()}


def millis(row: str) -> list[float]:
    return [float(v.replace(",", "")) for v in re.findall(r"([\d,.]+) ms", row)]


def check_panels(text: str, interval: float) -> None:
    """The second scrape's figures (see test_remote_metrics: 600 generated and 800 prompt tokens over the
    interval, 200 hits of 800 queries, 3 preemptions, 1400 tokens in 100 steps)."""
    r = rows(text)
    assert "remote server: no block map" in text and NOT_EXPORTED not in text
    assert r["usage"].endswith(" 43.8%") and "≈11,812 of 27,000 blocks of 16 tokens" in text
    assert r["hit rate"].endswith(" 25.0%")
    assert r["running"].endswith(" 5") and r["waiting"].endswith(" 0") and r["preempted"].endswith(" 3 /poll")
    assert r["generate"].endswith(f" {600 / interval:,.0f} tok/s")
    assert r["prefill"].endswith(f" {800 / interval:,.0f} tok/s")
    assert r["tok/step"].endswith(" 14.0")
    assert millis(r["TTFT"]) == pytest.approx([q * 1000 for q in TTFT], abs=0.51)
    assert millis(r["ITL"]) == pytest.approx([q * 1000 for q in ITL], abs=0.51)


def dashboard_text(app: NanoVllmApp) -> str:
    return app.screen.query_one(RemoteDashboard).text.plain


async def second_scrape(pilot, server: ScriptedServer) -> float:
    """Wait for the poller's first scrape, then take the second by hand (the poller sleeps a minute between
    scrapes, so the figures stay put); the interval between the two."""
    app = pilot.app
    await wait_for(pilot, lambda: app.service.snapshot() is not None, what="the first scrape")
    snap = await asyncio.to_thread(app.service.poller.poll_once)
    assert server.metrics_served == 2 and snap.interval is not None
    return snap.interval


@pytest.mark.parametrize("names", sorted(FIXTURES))
def test_every_panel_shows_the_fixture_figures(names):
    with ScriptedServer(metrics=[fixture(f) for f in FIXTURES[names]]) as server:
        app = attached(server.url, interval=60.0)

        async def run() -> None:
            async with app.run_test(size=(160, 60)) as pilot:
                interval = await second_scrape(pilot, server)
                await wait_for(pilot, lambda: "43.8%" in dashboard_text(app), what="the second scrape drawn")
                check_panels(dashboard_text(app), interval)
                await pilot.press("f3")  # the full-screen dashboard draws the same figures
                await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen), what="the dashboard screen")
                await wait_for(pilot, lambda: "43.8%" in dashboard_text(app), what="the full dashboard")
                check_panels(dashboard_text(app), interval)

        asyncio.run(run())


def test_a_metric_the_server_does_not_export_says_so():
    def without(text: str) -> str:
        drop = ("prefix_cache", "time_to_first_token", "iteration_tokens")
        return "\n".join(ln for ln in text.splitlines() if not any(d in ln for d in drop)) + "\n"

    texts = [without(fixture(f)) for f in FIXTURES["current"]]
    with ScriptedServer(metrics=texts) as server:
        app = attached(server.url, interval=60.0)

        async def run() -> None:
            async with app.run_test(size=(160, 60)) as pilot:
                await second_scrape(pilot, server)
                await wait_for(pilot, lambda: "43.8%" in dashboard_text(app), what="the second scrape drawn")
                r = rows(dashboard_text(app))
                assert r["hit rate"] == r["tok/step"] == r["TTFT"] == NOT_EXPORTED
                assert r["running"].endswith(" 5") and r["preempted"].endswith(" 3 /poll")
                assert millis(r["ITL"]) == pytest.approx([q * 1000 for q in ITL], abs=0.51)

        asyncio.run(run())


def test_kv_cache_usage_has_a_history():
    """Each poll's KV usage joins a sparkline (newest at the right, scaled to 100%), in both dashboards."""
    with ScriptedServer(metrics=[fixture(f) for f in FIXTURES["current"]]) as server:
        app = attached(server.url, interval=60.0)

        async def run() -> None:
            async with app.run_test(size=(160, 60)) as pilot:
                # The first scrape (25% used) must be drawn before the second, or the history never holds it.
                await wait_for(pilot, lambda: "25.0%" in dashboard_text(app), what="the first scrape drawn")
                assert rows(dashboard_text(app))["history"].endswith(f" {TICKS[2]} 25.0%")
                await asyncio.to_thread(app.service.poller.poll_once)
                await wait_for(pilot, lambda: "43.8%" in dashboard_text(app), what="the second scrape drawn")
                want = f" {TICKS[2]}{TICKS[3]} 43.8%"  # 0.25 and 0.4375 of 7 ticks, rounded
                assert rows(dashboard_text(app))["history"].endswith(want)
                await pilot.press("f3")
                await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen), what="the dashboard screen")
                await wait_for(pilot, lambda: "43.8%" in dashboard_text(app), what="the full dashboard")
                assert rows(dashboard_text(app))["history"].endswith(want)  # the same history, shared

        asyncio.run(run())
