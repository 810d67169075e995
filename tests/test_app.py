"""The Textual app driven headless (App.run_test + Pilot) over a real engine service and a tiny real Qwen3."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time

import pytest
from textual.widgets import DataTable, Input, Static

from nanovllm_tui.app.app import NanoVllmApp
from nanovllm_tui.app.screens.bench import BenchScreen
from nanovllm_tui.app.screens.help import PALETTE
from nanovllm_tui.app.session import SessionSettings
from nanovllm_tui.app.text import inert
from nanovllm_tui.app.widgets.chat import AnswerView, UserMessage
from nanovllm_tui.engine import LLM
from nanovllm_tui.engine.serving.process_service import ProcessEngineService
from nanovllm_tui.engine.serving.thread_service import EngineService


@pytest.fixture
def make_app(tiny_qwen3_gqa_dir):
    """A factory for an app over a fresh engine (greedy, small answers); the app owns and stops the service.

    engine="process" puts the engine in its own process (ProcessEngineService, the CLI's default)."""

    def make(
        max_tokens: int = 12, num_blocks: int = 64, max_model_len: int = 512, engine: str = "thread"
    ) -> NanoVllmApp:
        options = dict(kvcache_block_size=16, max_model_len=max_model_len, num_kvcache_blocks=num_blocks)
        if engine == "process":
            service = ProcessEngineService(tiny_qwen3_gqa_dir, torch_threads=1, device="cpu", **options)
        else:
            service = EngineService(LLM(str(tiny_qwen3_gqa_dir), **options))
        return NanoVllmApp(
            service,
            dataclasses.replace(service.engine_info(), model="tiny-qwen3"),
            owns_service=True,
            default_settings=SessionSettings(temperature=0.0, max_tokens=max_tokens),
        )

    return make


async def wait_for(pilot, cond, timeout: float = 120.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            app = pilot.app
            raise AssertionError(
                f"timed out waiting for {what}; engine {app.service.stats()}, "
                f"sessions {[(s.busy, s.messages) for s in app.sessions.values()]}"
            )
        await pilot.pause(0.02)


def used_blocks_shown(app: NanoVllmApp) -> int:
    """The 'used N/M' number the side dashboard currently displays."""
    text = str(app.screen.query_one("#blocks-usage", Static).render())
    return int(re.search(r"used ([\d,]+)/", text).group(1).replace(",", ""))


async def send(pilot, text: str) -> None:
    """Type into the active chat's prompt (once it has the focus) and press Enter."""
    app = pilot.app
    await wait_for(
        pilot,
        lambda: app.active_pane() is not None and app.focused is app.active_pane().prompt,
        what="focus on the prompt",
    )
    await pilot.press(*text, "enter")


async def focus_session(pilot, number: int) -> None:
    """Switch tabs by number and wait until that session's prompt has the focus (typing goes there)."""
    app = pilot.app

    def focused() -> bool:
        return app.pane_of(number) is not None and app.focused is app.pane_of(number).prompt

    for _ in range(3):  # a tab added a moment ago may still be mounting: press again
        await pilot.press(f"alt+{number}")
        try:
            await wait_for(pilot, focused, timeout=3.0, what=f"focus on chat {number}")
            return
        except AssertionError:
            pass
    await wait_for(pilot, focused, timeout=3.0, what=f"focus on chat {number}")


def run(coro) -> None:
    asyncio.run(coro)


@pytest.mark.parametrize("engine", ["thread", "process"])
def test_two_sessions_stream_concurrently(make_app, engine):
    async def scenario():
        app = make_app(max_tokens=200, engine=engine)
        async with app.run_test(size=(160, 50)) as pilot:
            await pilot.press("ctrl+n")
            await focus_session(pilot, 1)
            await pilot.press(*"first")
            await focus_session(pilot, 2)
            await pilot.press(*"second")
            # Send both in the same instant (what Enter does), so they surely overlap in the engine.
            app.pane_of(1).prompt.action_send()
            app.pane_of(2).prompt.action_send()
            s1, s2 = app.sessions[1], app.sessions[2]
            await wait_for(pilot, lambda: s1.num_requests == 1 and s2.num_requests == 1, what="both submitted")
            handles = [s1.handle, s2.handle]
            await wait_for(pilot, lambda: used_blocks_shown(app) > 0, what="dashboard showing used blocks")
            batch_sizes: set[int] = set()

            def both_done() -> bool:
                batch_sizes.update(step.num_seqs for step in app.window.steps)
                return not s1.busy and not s2.busy

            await wait_for(pilot, both_done, what="both answers")
            assert [(h.finish_reason, h.error) for h in handles] == [("length", None)] * 2
            for s in (s1, s2):
                assert [m["role"] for m in s.messages] == ["user", "assistant"]
                assert s.messages[1]["content"]
            # Both requests ran in the same engine steps (batched), and the dashboard saw those steps.
            assert max(batch_sizes) == 2
            await wait_for(pilot, lambda: used_blocks_shown(app) == 0, what="dashboard showing 0 used blocks")
            assert app.service.stats().num_blocks_used == 0
            # Each answer's Markdown holds the full text and a metrics line was written.
            await focus_session(pilot, 1)
            answer = app.pane_of(1).query_one(AnswerView)
            assert answer.done and answer.text == s1.messages[1]["content"]
            assert "TTFT" in str(answer.query_one(".metrics", Static).render())

    run(scenario())


@pytest.mark.parametrize("engine", ["thread", "process"])
def test_escape_stops_generation_and_frees_blocks(make_app, engine):
    async def scenario():
        # max_tokens far longer than the test waits
        app = make_app(max_tokens=2000, num_blocks=160, max_model_len=2048, engine=engine)
        async with app.run_test(size=(160, 50)) as pilot:
            await send(pilot, "a long answer please")
            session = app.sessions[1]
            await wait_for(
                pilot,
                lambda: used_blocks_shown(app) > 0 and app.pane_of(1).answer.text,
                what="streaming with blocks in use",
            )
            handle = session.handle
            await pilot.press("escape")
            await wait_for(pilot, lambda: not session.busy and app.pane_of(1).answer.done, what="the abort")
            assert handle.finish_reason == "abort"
            assert handle.metrics.num_generation_tokens < 2000
            assert "stopped" in str(app.pane_of(1).answer.query_one(".metrics", Static).render())
            await wait_for(pilot, lambda: used_blocks_shown(app) == 0, what="blocks freed on the dashboard")
            assert app.service.stats().num_blocks_used == 0

    run(scenario())


def test_regenerate_replaces_the_last_answer(make_app):
    async def scenario():
        app = make_app(max_tokens=8)
        async with app.run_test(size=(120, 40)) as pilot:
            await send(pilot, "hello")
            session = app.sessions[1]
            await wait_for(pilot, lambda: not session.busy and len(session.messages) == 2, what="first answer")
            first = session.messages[1]["content"]
            await pilot.press("ctrl+r")
            assert session.num_requests == 2
            await wait_for(pilot, lambda: not session.busy and len(session.messages) == 2, what="regenerated")
            assert session.messages[1]["content"] == first  # greedy: the same answer again
            assert len(app.pane_of(1).query(AnswerView)) == 1
            assert len(app.pane_of(1).query(UserMessage)) == 1

    run(scenario())


def test_policy_switch_takes_effect(make_app):
    async def scenario():
        app = make_app(max_tokens=6)
        async with app.run_test(size=(160, 50)) as pilot:
            assert app.policy == "mixed"
            await pilot.press("f4")
            assert app.policy == "prefill_first"
            await send(pilot, "hi")
            await wait_for(pilot, lambda: not app.sessions[1].busy, what="answer")
            await wait_for(
                pilot,
                lambda: app.window.latest is not None and app.window.latest.policy == "prefill_first",
                what="a step under the new policy",
            )
            assert app.service.stats_history()[-1].policy == "prefill_first"
            assert "prefill_first" in str(app.screen.query_one("#dash-header", Static).render())

    run(scenario())


@pytest.mark.parametrize("engine", ["thread", "process"])
def test_benchmark_screen_runs_a_workload_while_chat_works(make_app, engine):
    async def scenario():
        app = make_app(max_tokens=6, num_blocks=128, engine=engine)
        async with app.run_test(size=(160, 50)) as pilot:
            await pilot.press("f5")
            screen = app.screen
            assert isinstance(screen, BenchScreen)
            for name, value in (("requests", "6"), ("prompt", "8-24"), ("output", "4-12")):
                screen.query_one(f"#bench-{name}", Input).value = value
            await pilot.press("ctrl+s")
            run_ = app.bench_run
            assert run_ is not None and run_.total == 6
            await pilot.press("escape")  # back to chat while the benchmark runs
            await send(pilot, "still here?")
            await wait_for(pilot, lambda: not app.sessions[1].busy, what="chat answer during the benchmark")
            assert app.sessions[1].messages[-1]["role"] == "assistant"
            await wait_for(pilot, lambda: run_.end_time is not None, what="benchmark end")
            await pilot.press("f5")
            await pilot.pause(0.2)
            table = app.screen.query_one("#bench-results", DataTable)
            rows = {str(table.get_row_at(i)[0]): str(table.get_row_at(i)[1]) for i in range(table.row_count)}
            assert rows["requests"] == "6/6"
            result = run_.result()
            assert result.output_tokens == sum(r.max_tokens for r in run_.requests)
            assert result.throughput > 0 and result.ttft_p50 > 0

    run(scenario())


def test_narrow_terminal_puts_the_dashboard_on_its_own_screen(make_app):
    async def scenario():
        app = make_app()
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            assert not app.screen.query_one("#side-dashboard").display
            await pilot.press("f3")
            assert app.screen.query_one("#full-dashboard").display
            await pilot.press("escape")
            assert app.screen.query_one("#side-dashboard") is not None

    run(scenario())


def test_terminal_escape_sequences_are_shown_inert(make_app):
    async def scenario():
        app = make_app(max_tokens=4)
        async with app.run_test(size=(120, 40)) as pilot:
            pane = app.pane_of(1)
            await pane.send("clear \x1b[2J\x1b]0;title\x07 now")
            shown = str(pane.query_one(UserMessage).render())
            assert "\x1b" not in shown and "␛[2J" in shown and "␇" in shown
            await wait_for(pilot, lambda: not app.sessions[1].busy, what="answer")

    run(scenario())
    assert inert("a\x1b[2Jb\x9bc\n\t") == "a␛[2Jb\ufffdc\n\t"


def test_command_palette_runs_app_actions(make_app):
    async def scenario():
        app = make_app(max_tokens=4)
        async with app.run_test(size=(160, 50)):
            for title, _, action in PALETTE:
                assert callable(getattr(app, f"action_{action.split('(')[0]}", None)), f"{title}: no such action"
            commands = {c.title: c for c in app.get_system_commands(app.screen)}
            await commands["Policy: prefill_first"].callback()
            assert app.policy == "prefill_first"
            await commands["New chat"].callback()
            assert len(app.sessions) == 2

    run(scenario())
