"""The chat tabs: a tab whose answer is streaming says so (seen from another tab), and with many chats open the
active tab stays in view while switching with the keys terminals send."""

from __future__ import annotations

import re

from textual.widgets import Tabs

from nanovllm_tui.app.widgets.tabs import STREAMING
from tests.test_app import make_app, run, wait_for  # noqa: F401 (make_app is a fixture)
from tests.test_app_keys import prompt_focused, slow_steps
from tests.test_app_render import screen_rows


def label(app, number: int) -> str:
    return app.chat_tabs().get_tab(f"session-{number}").label_text


def tab_row(app) -> str:
    """The rendered row of tab labels (under the header)."""
    tabs = app.chat_tabs().query_one(Tabs)
    return screen_rows(app)[tabs.region.y]


def test_a_background_tab_shows_its_answer_is_streaming_until_it_ends(make_app):  # noqa: F811
    async def scenario():
        app = make_app(max_tokens=400)
        slow_steps(app, 0.02)  # 400 tokens: at least 8 s of streaming
        async with app.run_test(size=(120, 40)) as pilot:
            await prompt_focused(pilot)
            await pilot.press(*"tell me", "enter")
            first = app.sessions[1]
            await wait_for(pilot, lambda: first.busy, what="chat 1 answering")
            await pilot.press("ctrl+n")
            await wait_for(pilot, lambda: app.active_pane() is not None and app.active_pane().session.number == 2)
            await wait_for(pilot, lambda: label(app, 1) == STREAMING + "Chat 1", what="chat 1's tab marked")
            await wait_for(pilot, lambda: f"{STREAMING}Chat 1" in tab_row(app), what="the mark drawn")
            assert first.busy, "the answer ended before the mark could be checked"
            assert label(app, 2) == "Chat 2", "an idle tab is marked"
            assert app.pane_of(1).stop()
            await wait_for(pilot, lambda: not first.busy, what="chat 1's answer stopped")
            await wait_for(pilot, lambda: label(app, 1) == "Chat 1", what="the mark cleared")
            await wait_for(pilot, lambda: STREAMING not in tab_row(app), what="the mark gone from the screen")
            assert re.search(r"\bChat 1\b", tab_row(app))

    run(scenario())


def active_in_view(app) -> bool:
    """The active tab lies wholly inside the tab row, and its label is drawn there."""
    tabs = app.chat_tabs()
    tab, row = tabs.get_tab(tabs.active), tabs.query_one(Tabs).region
    inside = row.x <= tab.region.x and tab.region.right <= row.right and tab.region.width > 0
    return inside and re.search(rf"(?<!\S){re.escape(tab.label_text)}(?!\d)", tab_row(app)) is not None


def test_with_many_chats_the_active_tab_stays_in_view(make_app):  # noqa: F811
    async def scenario():
        app = make_app()
        async with app.run_test(size=(80, 24)) as pilot:
            await prompt_focused(pilot)
            for n in range(2, 13):
                await pilot.press("ctrl+n")
                await wait_for(pilot, lambda n=n: len(app.sessions) == n, what=f"{n} chats")
            await prompt_focused(pilot)
            tabs = app.chat_tabs().query_one(Tabs)
            assert sum(t.region.width for t in tabs.query("Tab")) > tabs.region.width, "the tabs fit: nothing to test"
            await wait_for(pilot, lambda: active_in_view(app), what="chat 12 in view")
            # Round the end both ways (12 -> 1 -> 12), then a few steps in the middle.
            keys = ["ctrl+pagedown", "f10", "f9", "ctrl+pageup", "ctrl+pageup", *["f9"] * 5, *["ctrl+pagedown"] * 7]
            number = 12
            for key in keys:
                number = number % 12 + 1 if key in ("ctrl+pagedown", "f10") else (number - 2) % 12 + 1
                await pilot.press(key)
                await wait_for(
                    pilot, lambda n=number: app.active_pane().session.number == n, what=f"{key}: chat {number}"
                )
                await wait_for(pilot, lambda: active_in_view(app), timeout=10, what=f"{key}: chat {number} in view")
                await prompt_focused(pilot)  # the keys are pressed from the prompt box, once focus has settled

    run(scenario())
