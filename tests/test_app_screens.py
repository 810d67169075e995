"""The app as a new user meets it: the dashboard's running / waiting count a request before any step reported it,
the thinking toggle shows only for models that have it, and keys typed on the dashboard or benchmark screen
reach the chat's prompt instead of vanishing."""

from __future__ import annotations

import re
import shutil

import pytest
from textual.widgets import Checkbox, Input, Static

from nanovllm_tui.app.app import NanoVllmApp
from nanovllm_tui.app.screens.bench import BenchScreen
from nanovllm_tui.app.screens.dashboard import DashboardScreen
from nanovllm_tui.app.screens.settings import SettingsScreen
from nanovllm_tui.app.session import SessionSettings
from nanovllm_tui.engine import LLM
from nanovllm_tui.engine.serving.thread_service import EngineService
from tests.test_app import make_app, run, wait_for  # noqa: F401 (make_app is a fixture)
from tests.test_app_keys import prompt_focused
from tests.test_reliability_chat import QWEN3_STYLE


def running_waiting(app) -> tuple[int, int]:
    """The 'running R  waiting W' the side dashboard shows."""
    text = str(app.screen.query_one("#dash-batch", Static).render())
    found = re.search(r"running (\d+)\s+waiting (\d+)", text)
    assert found, text
    return int(found.group(1)), int(found.group(2))


def test_running_and_waiting_count_a_request_no_step_has_reported_yet(make_app):  # noqa: F811
    async def scenario():
        app = make_app(max_tokens=4)
        async with app.run_test(size=(160, 50)) as pilot:
            await prompt_focused(pilot)
            session = app.sessions[1]
            await pilot.press(*"hello")
            # Holding the engine's intake stands for a long first prefill step: the request is live, and no
            # step that includes it has finished (so the engine's last counts say nothing runs).
            with app.service.batch():
                await pilot.press("enter")
                await wait_for(pilot, lambda: session.busy, what="submitted")
                await wait_for(pilot, lambda: sum(running_waiting(app)) == 1, timeout=20, what="the request counted")
                assert app.service.stats().num_steps == 0, "a step ran while the engine's intake was held"
            await wait_for(pilot, lambda: not session.busy, what="the answer")
            await wait_for(pilot, lambda: running_waiting(app) == (0, 0), timeout=20, what="nothing live")

    run(scenario())


def settings_after_f2(app) -> SettingsScreen:
    assert isinstance(app.screen, SettingsScreen)
    return app.screen


def test_the_thinking_toggle_is_hidden_for_a_template_without_it(make_app):  # noqa: F811
    async def scenario():
        app = make_app()
        assert not app.info.has_reasoning_template  # the demo model's (SmolLM2) template
        async with app.run_test(size=(120, 40)) as pilot:
            await prompt_focused(pilot)
            await pilot.press("f2")
            await wait_for(pilot, lambda: isinstance(app.screen, SettingsScreen), what="settings")
            screen = settings_after_f2(app)
            await wait_for(pilot, lambda: bool(screen.query("#temperature")), what="the form")
            assert not screen.query(Checkbox) and "thinking" not in str(screen.query("Label").results())
            screen.query_one("#max_tokens", Input).value = "33"
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: len(app.screen_stack) == 1, what="saved")
            settings = app.sessions[1].settings
            assert settings.max_tokens == 33 and settings.thinking is True  # kept as it was

    run(scenario())


@pytest.fixture
def qwen3_template_dir(tiny_qwen3_gqa_dir, tmp_path):
    """The tiny model with a Qwen3-style chat template (enable_thinking, <think> blocks)."""
    path = tmp_path / "qwen3-template"
    shutil.copytree(tiny_qwen3_gqa_dir, path)
    (path / "chat_template.jinja").write_text(QWEN3_STYLE)
    return path


def test_the_thinking_toggle_shows_for_a_qwen3_style_template(qwen3_template_dir):
    service = EngineService(
        LLM(str(qwen3_template_dir), kvcache_block_size=16, max_model_len=512, num_kvcache_blocks=32)
    )
    app = NanoVllmApp(service, owns_service=True, default_settings=SessionSettings(temperature=0.0, max_tokens=4))
    assert app.info.has_reasoning_template

    async def scenario():
        async with app.run_test(size=(120, 40)) as pilot:
            await prompt_focused(pilot)
            await pilot.press("f2")
            await wait_for(pilot, lambda: isinstance(app.screen, SettingsScreen), what="settings")
            screen = settings_after_f2(app)
            await wait_for(pilot, lambda: bool(screen.query("#thinking")), what="the toggle")
            box = screen.query_one("#thinking", Checkbox)
            assert box.value is True and box.region.height == 1
            box.value = False
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: len(app.screen_stack) == 1, what="saved")
            assert app.sessions[1].settings.thinking is False

    run(scenario())


def test_keys_typed_on_the_dashboard_or_bench_screen_reach_the_prompt(make_app):  # noqa: F811
    async def scenario():
        app = make_app()
        async with app.run_test(size=(160, 50)) as pilot:
            await prompt_focused(pilot)
            prompt = app.active_pane().prompt
            await pilot.press(*"ab")
            await pilot.press("f3")
            await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen), what="dashboard")
            await pilot.press("c")
            await wait_for(pilot, lambda: len(app.screen_stack) == 1, what="back to the chat")
            await prompt_focused(pilot)
            assert prompt.text == "abc"
            await pilot.press("d")  # the cursor is after the character carried over
            assert prompt.text == "abcd"
            # The benchmark form keeps what is typed into its fields; elsewhere on that screen it goes to the chat.
            await pilot.press("f5")
            await wait_for(pilot, lambda: isinstance(app.screen, BenchScreen), what="bench")
            field = app.screen.query_one("#bench-requests", Input)
            field.focus()
            await wait_for(pilot, lambda: app.focused is field, what="the requests field")
            await pilot.press("end", "7")  # (focus selects the field's text)
            assert field.value == "167" and isinstance(app.screen, BenchScreen)
            app.screen.query_one("#bench-stop").focus()
            await wait_for(pilot, lambda: app.focused is app.screen.query_one("#bench-stop"), what="a button")
            await pilot.press("e")
            await wait_for(pilot, lambda: len(app.screen_stack) == 1, what="back to the chat again")
            await prompt_focused(pilot)
            assert prompt.text == "abcde"

    run(scenario())
