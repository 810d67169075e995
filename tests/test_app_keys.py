"""Issue 20's keys: every footer key works from the prompt box, chat switching with keys terminals send, Esc semantics."""

from __future__ import annotations

import re
import time

from textual import events
from textual.binding import Binding
from textual.widgets import Static

from nanovllm_tui.app.app import NanoVllmApp
from nanovllm_tui.app.screens.bench import BenchScreen
from nanovllm_tui.app.screens.dashboard import DashboardScreen
from nanovllm_tui.app.screens.help import APP_BINDINGS, HelpScreen
from nanovllm_tui.app.screens.settings import SettingsScreen
from nanovllm_tui.app.session import SessionSettings
from nanovllm_tui.engine import LLM
from nanovllm_tui.engine.serving.thread_service import EngineService
from tests.test_app import make_app, run, wait_for  # noqa: F401 (make_app is a fixture)


def slow_steps(app: NanoVllmApp, seconds: float) -> None:
    """Make every engine step last at least `seconds` (a step listener runs on the engine thread, which waits for
    it), so an answer or a chunked prefill stays in progress for many UI frames whatever the machine's speed."""
    app.service.subscribe(lambda step: time.sleep(seconds))


async def prompt_focused(pilot) -> None:
    app = pilot.app
    await wait_for(pilot, lambda: app.active_pane() is not None and app.focused is app.active_pane().prompt)


def test_every_footer_key_works_from_the_prompt_box(make_app, tmp_path, monkeypatch):  # noqa: F811
    shown = {b.key for b in APP_BINDINGS if isinstance(b, Binding) and b.show}
    tested: set[str] = set()
    monkeypatch.chdir(tmp_path)  # ctrl+s exports into the working directory

    async def scenario():
        app = make_app(max_tokens=4)
        async with app.run_test(size=(160, 50)) as pilot:
            await prompt_focused(pilot)

            async def press(key: str) -> None:
                assert app.focused is app.active_pane().prompt, f"{key}: the prompt lost the focus"
                tested.add(key)
                await pilot.press(key)

            await press("ctrl+n")
            await wait_for(pilot, lambda: len(app.sessions) == 2, what="ctrl+n opened a chat")
            await prompt_focused(pilot)
            await press("ctrl+w")  # TextArea's delete-word-left must not win
            await wait_for(pilot, lambda: len(app.sessions) == 1, what="ctrl+w closed the chat")
            await prompt_focused(pilot)
            await pilot.press(*"hi", "enter")
            session = app.sessions[min(app.sessions)]
            await wait_for(pilot, lambda: not session.busy and len(session.messages) == 2, what="an answer")
            await press("ctrl+r")
            await wait_for(pilot, lambda: session.num_requests == 2, what="ctrl+r regenerated")
            await wait_for(pilot, lambda: not session.busy, what="the regenerated answer")
            notes = len(app._notifications)
            await press("ctrl+y")  # TextArea's redo must not win
            await wait_for(pilot, lambda: len(app._notifications) > notes, what="ctrl+y copied")
            assert "copied" in list(app._notifications)[-1].message
            for key, screen in [("f1", HelpScreen), ("f2", SettingsScreen), ("f3", DashboardScreen)]:
                await press(key)
                await wait_for(pilot, lambda screen=screen: isinstance(app.screen, screen), what=f"{key} screen")
                await pilot.press("escape")
                await wait_for(pilot, lambda: len(app.screen_stack) == 1, what=f"{key} closed by esc")
                await prompt_focused(pilot)
            policy = app.policy
            await press("f4")
            assert app.policy != policy
            await press("f5")
            await wait_for(pilot, lambda: isinstance(app.screen, BenchScreen), what="f5 bench screen")
            await pilot.press("escape")
            await wait_for(pilot, lambda: len(app.screen_stack) == 1, what="bench closed")
            await prompt_focused(pilot)
            depth = len(app.screen_stack)
            await press("ctrl+o")
            await wait_for(pilot, lambda: len(app.screen_stack) > depth, what="ctrl+o saved chats")
            await pilot.press("escape")
            await wait_for(pilot, lambda: len(app.screen_stack) == 1, what="saved chats closed")
            await prompt_focused(pilot)
            await press("ctrl+s")
            await wait_for(pilot, lambda: len(list(tmp_path.iterdir())) == 2, what="ctrl+s exported the chat")
            assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".md"]
            assert "hi" in next(tmp_path.glob("*.md")).read_text()
            session.settings.max_tokens = 400  # long enough to be stopped midway
            slow_steps(app, 0.02)
            await pilot.press(*"go on", "enter")
            await wait_for(pilot, lambda: session.busy, what="a long answer running")
            handle = session.handle
            await press("escape")
            await wait_for(pilot, lambda: not session.busy, what="esc stopped the answer")
            assert handle.finish_reason == "abort" and handle.metrics.num_generation_tokens < 400

    run(scenario())
    assert shown <= tested, f"footer keys without a test from the prompt box: {shown - tested}"


def test_chat_switching_keys_that_terminals_send(make_app):  # noqa: F811
    async def scenario():
        app = make_app()
        async with app.run_test(size=(160, 50)) as pilot:
            await prompt_focused(pilot)
            await pilot.press("ctrl+n")
            await wait_for(pilot, lambda: len(app.sessions) == 2, what="two chats")
            first, second = sorted(app.sessions)
            # The new chat's tab is activated after the session exists: wait for it, don't assume it.
            await wait_for(pilot, lambda: app.active_pane().session.number == second, what="the new chat active")
            await prompt_focused(pilot)
            for key, number in [("ctrl+pageup", first), ("ctrl+pagedown", second), ("f9", first), ("f10", second)]:
                await pilot.press(key)
                await wait_for(pilot, lambda n=number: app.active_pane().session.number == n, what=f"{key}")
                await prompt_focused(pilot)

    run(scenario())


def test_esc_closing_a_dialog_does_not_stop_the_answer_and_bench_goes_back_to_chat(make_app):  # noqa: F811
    async def scenario():
        app = make_app(max_tokens=400)
        slow_steps(app, 0.02)  # 400 tokens: at least 8 s, so the answer surely outlives the dialog
        async with app.run_test(size=(160, 50)) as pilot:
            await prompt_focused(pilot)
            await pilot.press(*"tell me", "enter")
            session = app.sessions[min(app.sessions)]
            await wait_for(pilot, lambda: session.busy, what="an answer running")
            handle = session.handle
            await pilot.press("f1")
            await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), what="help")
            assert not handle.done, "the answer ended before the dialog closed: nothing to test"
            await pilot.press("escape")
            await wait_for(pilot, lambda: len(app.screen_stack) == 1, what="help closed")
            # An aborted request gets at most the token of the step in flight; these many more mean it runs on.
            tokens = handle.metrics.num_generation_tokens
            await wait_for(
                pilot,
                lambda: handle.metrics.num_generation_tokens >= tokens + 5 or not session.busy,
                what="tokens after the dialog closed",
            )
            assert handle.finish_reason != "abort", "the Esc that closed the dialog also stopped the answer"
            assert session.busy and handle.metrics.num_generation_tokens >= tokens + 5
            await prompt_focused(pilot)
            await pilot.press(*"draft")
            await pilot.press("f3")
            await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen), what="dashboard")
            await pilot.press("f5")
            await wait_for(pilot, lambda: isinstance(app.screen, BenchScreen), what="bench")
            await pilot.press("escape")  # the footer says "Back to chat": not back to the dashboard
            await wait_for(pilot, lambda: len(app.screen_stack) == 1, what="back to the chat")
            await prompt_focused(pilot)
            assert app.active_pane().prompt.text == "draft"
            app.active_pane().stop()
            await wait_for(pilot, lambda: not session.busy, what="the answer stopped")

    run(scenario())


def test_paste_arrives_as_typed_with_control_bytes_inert_and_keeps_the_focus(make_app):  # noqa: F811
    async def scenario():
        app = make_app()
        async with app.run_test(size=(160, 50)) as pilot:
            await prompt_focused(pilot)
            prompt = app.active_pane().prompt
            await pilot.press(*"> ")
            prompt.post_message(events.Paste("A \x1b[31mRED\x1b[0m B\tC\r\nnext 👍"))
            await wait_for(pilot, lambda: "next" in prompt.text, what="the paste")
            assert prompt.text == "> A ␛[31mRED␛[0m B\tC\nnext 👍"
            assert app.focused is prompt
            await pilot.press(*"!")  # the cursor is after the paste
            assert prompt.text.endswith("👍!")

    run(scenario())


def test_a_chunked_prefill_shows_its_progress_until_the_first_token(tiny_qwen3_gqa_dir):
    service = EngineService(
        LLM(
            str(tiny_qwen3_gqa_dir),
            kvcache_block_size=16,
            max_model_len=2048,
            num_kvcache_blocks=160,
            max_num_batched_tokens=16,
        )
    )
    app = NanoVllmApp(service, owns_service=True, default_settings=SessionSettings(temperature=0.0, max_tokens=4))
    slow_steps(app, 0.03)  # ~60 steps of 16 prompt tokens: the progress line is up for about 2 s, some 20 frames
    seen: set[str] = set()

    async def scenario():
        async with app.run_test(size=(160, 50)) as pilot:
            await prompt_focused(pilot)
            prompt = app.active_pane().prompt
            prompt.post_message(events.Paste(" ".join(f"word{i}" for i in range(400))))
            await wait_for(pilot, lambda: "word399" in prompt.text, what="the paste")
            await pilot.press("enter")
            session = app.sessions[min(app.sessions)]
            await wait_for(pilot, lambda: session.num_requests == 1, what="submitted")

            def done() -> bool:
                answer = app.active_pane().answer
                if answer is not None and answer.progress:
                    seen.add(answer.progress)
                return not session.busy

            await wait_for(pilot, done, timeout=300, what="the answer")
            answer = app.active_pane().answer
            assert answer.progress == ""
            # The metrics line is drawn on the app's next timer tick after the answer ends: wait for it.
            await wait_for(
                pilot, lambda: "TTFT" in str(answer.query_one(".metrics", Static).render()), what="the metrics line"
            )
            steps = [s for s in app.window.steps if s.prefilling]
            assert steps and all(c < t for s in steps for _, c, t in s.prefilling)

    run(scenario())
    assert len(seen) >= 3, f"the progress line was not seen moving: {seen}"
    for line in seen:
        assert re.fullmatch(r"prefilling [\d,]+ / [\d,]+ tokens", line), line
