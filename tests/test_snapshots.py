"""SVG snapshots of the app's main screens (pytest-textual-snapshot), with a real idle engine so nothing varies.

Regenerate after a deliberate UI change:  python -m pytest tests/test_snapshots.py --snapshot-update
(then look at the SVGs under tests/__snapshots__/test_snapshots/ before committing them).
"""

from __future__ import annotations

import dataclasses

import pytest

pytest.importorskip("pytest_textual_snapshot")

from textual.widgets import Static

from nanovllm_tui.app.app import NanoVllmApp
from nanovllm_tui.app.session import SessionSettings
from nanovllm_tui.engine import LLM
from nanovllm_tui.engine.serving.thread_service import EngineService


@pytest.fixture(scope="module")
def idle_service(demo_model_dir):
    """One idle engine for every snapshot: nothing is generated, so counters and the block map stay empty."""
    llm = LLM(str(demo_model_dir), kvcache_block_size=16, max_model_len=1024, num_kvcache_blocks=256)
    service = EngineService(llm)
    yield service, dataclasses.replace(service.engine_info(), model="SmolLM2-135M-Instruct")
    service.shutdown()


@pytest.fixture
def app(idle_service):
    service, info = idle_service
    app = NanoVllmApp(service, info, default_settings=SessionSettings(temperature=0.0, max_tokens=64))
    app.animation_level = "none"  # e.g. the tab underline slides: a snapshot mid-animation would differ
    return app


def after(*keys: str, scroll_home: bool = False):
    """run_before for snap_compare: press keys, then let the stats timer draw the dashboard at least once
    (snap_compare's own `press` runs after run_before, too late for the timer)."""

    async def drawn(pilot) -> None:
        app = pilot.app
        for _ in range(200):  # a loaded CI machine may take a while to compose and draw
            headers = [str(s.render()) for s in app.screen.query("#dash-header").results(Static)]
            if all(headers):
                break
            await pilot.pause(0.05)
        await pilot.pause(0.1)
        app.refresh_dashboards()
        for widget in app.screen.query("TextArea, Input"):
            widget.cursor_blink = False  # a blinking cursor would make the snapshot depend on timing
        await pilot.pause(0.2)

    async def run_before(pilot) -> None:
        await drawn(pilot)
        if keys:
            await pilot.press(*keys)
            await drawn(pilot)
        if scroll_home:  # focus may scroll a tall screen at a timing-dependent moment: pin it to the top
            for widget in pilot.app.screen.query("*"):
                if widget.is_scrollable:
                    widget.scroll_home(animate=False)
            await pilot.pause(0.2)

    return run_before


def test_main_screen_wide(snap_compare, app):
    assert snap_compare(app, terminal_size=(160, 50), run_before=after())


def test_main_screen_80x24(snap_compare, app):
    assert snap_compare(app, terminal_size=(80, 24), run_before=after())


def test_dashboard_screen_80x24(snap_compare, app):
    assert snap_compare(app, terminal_size=(80, 24), run_before=after("f3", scroll_home=True))


def test_settings_modal(snap_compare, app):
    assert snap_compare(app, terminal_size=(120, 40), run_before=after("f2"))


def test_help_screen(snap_compare, app):
    assert snap_compare(app, terminal_size=(120, 40), run_before=after("f1"))


def test_benchmark_screen(snap_compare, app):
    assert snap_compare(app, terminal_size=(160, 50), run_before=after("f5"))
