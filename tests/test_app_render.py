"""What the app draws, read back from its own SVG screenshot (App.export_screenshot): the footer row at narrow widths
has only whole keys, and message borders stay intact around emoji and wide characters."""

from __future__ import annotations

import html
import re
from types import SimpleNamespace

import pytest
from rich.cells import cell_len, split_graphemes
from textual import events
from textual.widgets import Static
from textual.widgets._footer import FooterKey

from nanovllm_tui.app.screens.bench import BenchScreen
from nanovllm_tui.app.screens.dashboard import DashboardScreen
from nanovllm_tui.app.widgets.chat import AnswerView, UserMessage
from nanovllm_tui.app.widgets.footer import AppFooter
from tests.test_app import make_app, run, wait_for  # noqa: F401 (make_app is a fixture)
from tests.test_app_keys import prompt_focused

# One <text> element of Rich's SVG export: x in pixels (12.2 per cell), the row, the text.
_SPAN = re.compile(r'<text [^>]*\bx="([\d.]+)"[^>]*clip-path="url\(#[\w-]*?line-(\d+)\)">([^<]*)</text>')
CELL_PX = 12.2


def screen_cells(app) -> list[list[str]]:
    """The screen as rows of cells, from the app's SVG screenshot: a wide grapheme in its first cell, "" after it."""
    width, height = app.size
    grid = [[" "] * width for _ in range(height)]
    for x, row, text in _SPAN.findall(app.export_screenshot()):
        col, line = round(float(x) / CELL_PX), grid[int(row)]
        text = html.unescape(text).replace("\xa0", " ").rstrip("\n")
        for start, end, cells in split_graphemes(text)[0]:
            for i in range(cells):
                if 0 <= col + i < width:
                    line[col + i] = text[start:end] if i == 0 else ""
            col += cells
    return grid


def screen_rows(app) -> list[str]:
    """The screen as text, one string per row."""
    return ["".join(cells) for cells in screen_cells(app)]


def footer_clean(app) -> bool:
    """The last row is exactly the footer's shown keys, whole and in order, then the command-palette key."""
    footer = app.screen.query_one(AppFooter)
    keys = [k for k in footer.query_children(FooterKey) if k.display and not k.has_class("-command-palette")]
    shown = " ".join(f"{k.key_display} {k.description}" for k in keys)
    return bool(keys) and re.fullmatch(re.escape(shown) + r" *▏\^p palette", screen_rows(app)[-1]) is not None


@pytest.mark.parametrize("width", [80, 60])
def test_the_footer_shows_only_whole_keys_at_narrow_widths(make_app, width):  # noqa: F811
    screens = [
        (None, None, ["⏎ Send", "esc Stop", "f1 Help", "f3 Dashboard"]),  # no side dashboard this narrow: f3 stays
        ("f3", DashboardScreen, ["esc Back to chat", "f3 Back", "f1 Help"]),
        ("f5", BenchScreen, ["esc Back to chat", "^s Run", "f1 Help"]),
    ]

    async def scenario():
        app = make_app()
        async with app.run_test(size=(width, 24)) as pilot:
            await prompt_focused(pilot)
            for key, screen, must_show in screens:
                if key is not None:
                    await pilot.press(key)
                    await wait_for(pilot, lambda s=screen: isinstance(app.screen, s), what=f"{key}'s screen")
                # The keys a new user needs most stay when others go (the footer follows the focus a frame late).
                await wait_for(
                    pilot,
                    lambda m=must_show: footer_clean(app) and all(k in screen_rows(app)[-1] for k in m),
                    timeout=20,
                    what=f"a clean footer with {must_show}",
                )
                assert cell_len(screen_rows(app)[-1]) == width
                if key is not None:
                    await pilot.press("escape")
                    await wait_for(pilot, lambda: len(app.screen_stack) == 1, what="back on the chats")

    run(scenario())


WIDE = (
    "Emoji 👍🎉 family 👨‍👩‍👧 heart ❤️ flag 🇫🇷 keycap 1️⃣ skin 👍🏽 "
    + "你好世界" * 9
    + " ｆｕｌｌｗｉｄｔｈ ｔｅｘｔ "
    + "🎉" * 30
    + " end"
)


def border_intact(app, widget) -> bool:
    """Every row of the widget's box has its left border in the first cell and its right border in the last."""
    region, grid = widget.region, screen_cells(app)
    if region.height < 3:
        return False
    for row in range(region.y, region.bottom):
        top, bottom = row == region.y, row == region.bottom - 1
        left, right = ("╭", "╮") if top else ("╰", "╯") if bottom else ("│", "│")
        if (grid[row][region.x], grid[row][region.right - 1]) != (left, right):
            return False
    return True


@pytest.mark.parametrize("width", [80, 57])
def test_emoji_and_wide_characters_keep_message_borders_intact(make_app, width):  # noqa: F811
    async def scenario():
        app = make_app(max_tokens=2)
        async with app.run_test(size=(width, 50)) as pilot:
            await prompt_focused(pilot)
            pane = app.active_pane()
            pane.prompt.post_message(events.Paste(WIDE))
            await wait_for(pilot, lambda: pane.prompt.text.endswith("end"), what="the paste")
            await pilot.press("enter")
            await wait_for(pilot, lambda: not pane.session.busy and pane.answer is not None, what="the answer")
            # An answer with the same text in Markdown (a paragraph, a list, bold), drawn as the pane draws one.
            answer = AnswerView("wide")
            await pane.query_one(".messages").mount(answer)
            answer.add(f"{WIDE}\n\n- **{WIDE[:40]}**\n- 表 ｗ 🎉", "")
            await answer.finish("metrics 👍", None)
            user = pane.query_one(UserMessage)
            assert WIDE in str(user.render())
            await wait_for(pilot, lambda: answer.region.height > 4 and border_intact(app, answer), what="answer box")
            assert border_intact(app, user), "\n".join(screen_rows(app)[user.region.y : user.region.bottom])
            shifted = SimpleNamespace(region=user.region.translate((1, 0)))
            assert not border_intact(app, shifted), "the border check sees nothing"
            assert "🎉" in "".join(screen_rows(app)[answer.region.y : answer.region.bottom])
            assert answer.query_one(".metrics", Static).region.height == 1

    run(scenario())
