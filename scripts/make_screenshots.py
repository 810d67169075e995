"""Drive the real app (demo model, real engine) headless and save screenshots into screenshots/.

    python scripts/make_screenshots.py [--model DIR] [--out screenshots]

Writes chat_sessions.svg (three chats streaming beside the dashboard), benchmark.svg (a benchmark run
mid-flight), settings.svg (the session settings modal) and sessions.svg (the saved chats, ctrl+o: the three
chats, saved in a history file made for the run), plus .png copies when cairosvg is installed.
Re-run it whenever the UI changes.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from textual.widgets import DataTable, Input, TextArea

from nanovllm_tui.app.app import NanoVllmApp
from nanovllm_tui.app.history.chat_history import ChatHistory
from nanovllm_tui.app.history.paths import resolve
from nanovllm_tui.app.screens.sessions import SessionsScreen
from nanovllm_tui.app.session import SessionSettings
from nanovllm_tui.app.widgets.chat import ChatPane
from nanovllm_tui.bench.driver import BenchRun
from nanovllm_tui.engine import LLM
from nanovllm_tui.engine.demo_model import ensure_demo_model
from nanovllm_tui.engine.serving.thread_service import EngineService

SIZE = (160, 50)
PROMPTS = [
    "Explain what a KV cache is in two short paragraphs.",
    "Write a haiku about GPUs, then explain it.",
    "List five tips for writing readable Python code.",
]


async def wait_until(pilot, cond, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("the app did not reach the state to screenshot")
        await pilot.pause(0.05)


def save(app: NanoVllmApp, out: pathlib.Path, name: str) -> None:
    for widget in app.screen.query("TextArea, Input"):
        if isinstance(widget, (TextArea, Input)):
            widget.cursor_blink = False
    path = out / f"{name}.svg"
    app.save_screenshot(filename=path.name, path=str(out))
    try:
        import cairosvg
    except ImportError:
        print(f"wrote {path}")
        return
    cairosvg.svg2png(url=str(path), write_to=str(out / f"{name}.png"))
    print(f"wrote {path} and {name}.png")


def pane(app: NanoVllmApp, number: int) -> ChatPane:
    found = app.pane_of(number)
    if found is None:
        raise RuntimeError(f"session {number} has no chat pane")
    return found


def bench_run(app: NanoVllmApp) -> BenchRun:
    if app.bench_run is None:
        raise RuntimeError("the benchmark did not start")
    return app.bench_run


def sessions_listed(app: NanoVllmApp) -> bool:
    """The saved-chats screen is up with the three chats and the saved reopen count shown."""
    screen = app.screen
    if not isinstance(screen, SessionsScreen):
        return False
    return screen.query_one(DataTable).row_count == len(PROMPTS) and screen.reopen_saved is not None


async def save_sessions(pilot, out: pathlib.Path) -> None:
    """4. the saved chats: the three chats above, in the history file of this run."""
    app = pilot.app
    await wait_until(pilot, lambda: app.screen is app.screen_stack[0])  # the settings modal has closed
    await pilot.press("ctrl+o")
    await wait_until(pilot, lambda: sessions_listed(app))
    save(app, out, "sessions")
    await pilot.press("escape")


async def main(model: str, out: pathlib.Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    llm = LLM(model, kvcache_block_size=16, max_model_len=1024, num_kvcache_blocks=384)
    service = EngineService(llm)
    app = NanoVllmApp(
        service,
        dataclasses.replace(service.engine_info(), model=pathlib.Path(model).name),
        owns_service=True,
        default_settings=SessionSettings(temperature=0.7, seed=0, max_tokens=200),
        # A fresh file, named relative to the working directory: the screen shows "history: history.sqlite3".
        history=ChatHistory.open(resolve("history.sqlite3", False, {})),
        reopen=0,
    )
    async with app.run_test(size=SIZE) as pilot:
        # 1. three chats streaming at once, batched by the engine
        for i, prompt in enumerate(PROMPTS, start=1):
            if i > 1:
                await pilot.press("ctrl+n")
            await wait_until(pilot, lambda i=i: app.pane_of(i) is not None and app.focused is pane(app, i).prompt)
            await pilot.press(*prompt)
        for i in (1, 2, 3):  # send all three at once, as quick Enters in three tabs would
            pane(app, i).prompt.action_send()
        await pilot.press("alt+2")

        def streaming() -> bool:
            answers = [pane(app, i).answer for i in (1, 2, 3)]
            return all(a is not None and len(a.text) > 30 for a in answers) or any(a and a.done for a in answers)

        await wait_until(pilot, streaming)
        await pilot.pause(0.3)
        save(app, out, "chat_sessions")
        await wait_until(pilot, lambda: not any(s.busy for s in app.sessions.values()))

        # 2. a benchmark mid-flight (the dashboard beside it animates)
        await pilot.press("f5")
        await pilot.pause(0.3)
        screen = app.screen
        screen.query_one("#bench-requests", Input).value = "32"
        screen.query_one("#bench-prompt", Input).value = "32-192"
        screen.query_one("#bench-output", Input).value = "16-96"
        await pilot.press("ctrl+s")
        run = bench_run(app)
        await wait_until(pilot, lambda: run.num_finished >= run.total // 3)
        await pilot.pause(0.3)
        save(app, out, "benchmark")
        await wait_until(pilot, lambda: run.end_time is not None)
        await pilot.press("escape")

        # 3. the settings modal
        await pilot.press("f2")
        await pilot.pause(0.5)
        save(app, out, "settings")
        await pilot.press("escape")
        await save_sessions(pilot, out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model dir (default: the demo model SmolLM2-135M-Instruct)")
    parser.add_argument("--out", default=str(pathlib.Path(__file__).resolve().parents[1] / "screenshots"))
    args = parser.parse_args()
    model_dir = str(pathlib.Path(args.model).resolve()) if args.model else str(ensure_demo_model())
    out_dir = pathlib.Path(args.out).resolve()
    with tempfile.TemporaryDirectory(prefix="screenshots-") as workdir:
        os.chdir(workdir)  # the history file of this run lives (and goes) here
        asyncio.run(main(model_dir, out_dir))
