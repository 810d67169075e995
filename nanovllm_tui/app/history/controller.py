"""HistoryController: the app's side of the history — reopens recent chats at start, saves chats as they change
(through the Recorder and the writer thread), shows each chat's title and system prompt, and runs the sessions
screen, the exports and "copy a message". The app calls it from a few places; it never blocks the UI on the disk.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from textual.widgets import TabbedContent

from nanovllm_tui.app.history.chat_history import ChatHistory
from nanovllm_tui.app.history.export import write_exports
from nanovllm_tui.app.history.panes import SystemPromptView, set_tab_title, show_record, show_system_prompt
from nanovllm_tui.app.history.preferences import saved_reopen
from nanovllm_tui.app.history.recorder import Recorder
from nanovllm_tui.app.history.records import MessageRecord, SessionRecord
from nanovllm_tui.app.history.store import HistoryStore
from nanovllm_tui.app.screens.messages import MessagePicker
from nanovllm_tui.app.screens.sessions import SessionsScreen
from nanovllm_tui.app.session import ChatSession
from nanovllm_tui.app.widgets.chat import ChatPane

if TYPE_CHECKING:
    from nanovllm_tui.app.app import NanoVllmApp

T = TypeVar("T")
READ_TIMEOUT_S = 10.0


def memory_record(session: ChatSession, model: str, title: str) -> SessionRecord:
    """A chat that is not in the history (history off) as a record, for exporting it."""
    now = time.time()
    record = SessionRecord("", title, now, now, model, session.settings.copy())
    record.messages = [MessageRecord(m["role"], m["content"], seq=i) for i, m in enumerate(session.messages)]
    return record


class HistoryController:
    """History for one NanoVllmApp. `history` None: off, silently (tests and embedders that did not ask)."""

    def __init__(self, app: NanoVllmApp, history: ChatHistory | None, reopen: int):
        """reopen: how many chats to reopen at start (paths.REOPEN_SAVED: the count saved in the history)."""
        self.app = app
        self.history = history if history is not None else ChatHistory(None, "")
        self.reopen = reopen
        self.recorder = Recorder(self.history.writer, app.info.model)
        self._views: dict[int, SystemPromptView] = {}  # by session number
        self._labels: dict[int, str] = {}  # tab titles shown, by session number

    async def call(self, fn: Callable[[HistoryStore], T]) -> T:
        """Run fn(store) on the writer thread and wait for it without blocking the UI."""
        if self.history.writer is None:
            raise RuntimeError(self.history.note or "history is off")
        future = self.history.writer.submit(fn)
        return await asyncio.wait_for(asyncio.wrap_future(future), READ_TIMEOUT_S)

    async def start(self) -> bool:
        """Say in one line if history is off or shared; reopen the recent chats. False if none was reopened."""
        h = self.history
        if h.note and (not h.enabled or h.shared) and not h.note.endswith("--no-history"):
            self.app.notify(h.note, severity="warning", timeout=15)
        if h.writer is None or h.shared or self.reopen == 0:
            return False
        flag = self.reopen  # REOPEN_SAVED (below 0): --reopen was not given, the saved count decides
        try:
            records = await self.call(lambda store: store.reopen(saved_reopen(store) if flag < 0 else flag))
        except Exception as exc:
            self.app.notify(f"could not reopen saved chats: {exc}", severity="error")
            return False
        keep = [r.uid for r in records]
        h.writer.submit(lambda store: store.keep_open(keep))
        for record in records:
            await self.open_record(record)
        return bool(records)

    async def open_record(self, record: SessionRecord) -> None:
        """Open a saved chat in a new tab (or switch to its tab if it is open already)."""
        for number, tracked in self.recorder.tracked.items():
            if tracked.uid == record.uid and self.app.pane_of(number) is not None:
                self._tabs().active = f"session-{number}"
                return
        if self.history.shared and record.is_open:
            self.app.notify("that chat may be open in another nanovllm-tui; close it there first", severity="warning")
            return
        await self.app.action_new_session()
        number = max(self.app.sessions)
        session, pane = self.app.sessions[number], self.app.pane_of(number)
        # No await between these three lines: the timer must not see the messages before the recorder does.
        session.settings = record.settings.copy()
        session.messages = record.chat_messages()
        self.recorder.track(session, record)
        if pane is not None:
            await show_record(pane, record)
            await self.sync(pane)
            pane.refresh_status()

    async def sync(self, pane: ChatPane, handle: Any = None) -> None:
        """After a pump: save what changed, keep the tab title and the system prompt shown in step."""
        session = pane.session
        if self.app.sessions.get(session.number) is not session:  # its tab is being closed
            return
        if session.number not in self.recorder.tracked:
            self.recorder.track(session)
        self.recorder.sync(session, handle)
        title = self.recorder.title(session.number) or session.title
        if self._labels.get(session.number) != title:
            set_tab_title(self._tabs(), f"session-{session.number}", title)
            self._labels[session.number] = title
        view = self._views.get(session.number)
        if view is None or view.prompt != session.settings.system_prompt:
            await show_system_prompt(pane)
            self._views[session.number] = pane.query_one(SystemPromptView)
        if self.history.writer is not None:
            for error in self.history.writer.take_errors():
                self.app.notify(f"history: a write failed: {error}", severity="error", timeout=10)

    def closed(self, session: ChatSession) -> None:
        """The chat's tab is closing: save its streaming answer so far, stop reopening it."""
        self.recorder.save_partial(session)
        self.recorder.close(session)
        self._views.pop(session.number, None)
        self._labels.pop(session.number, None)

    def close(self, timeout: float = 5.0) -> None:
        """The app is ending: save every chat (answers streaming now, as stopped), then close the file."""
        for session in list(self.app.sessions.values()):
            self.recorder.save_partial(session)
            self.recorder.sync(session)
        self.history.close(timeout)

    def _tabs(self) -> TabbedContent:
        return self.app.screen_stack[0].query_one("#sessions", TabbedContent)

    def is_open_here(self, uid: str) -> bool:
        return any(t.uid == uid for t in self.recorder.tracked.values())

    def title_of(self, session: ChatSession) -> str:
        return self.recorder.title(session.number) or session.title

    async def record_of(self, session: ChatSession) -> SessionRecord | None:
        """The chat as saved (with its timings), or from memory when it is not in the history."""
        uid = self.recorder.uid(session.number)
        if uid is not None and self.history.writer is not None and self.recorder.title(session.number) is not None:
            return await self.call(lambda store: store.load_uid(uid))
        if not session.messages:
            return None
        return memory_record(session, self.app.info.model, self.title_of(session))

    async def export(self, formats: tuple[str, ...] = ("md", "json"), directory: Path | None = None) -> list[Path]:
        """Export the active chat into `directory` (the working directory by default); the files written."""
        pane = self.app.active_pane()
        record = await self.record_of(pane.session) if pane is not None else None
        if record is None or not record.messages:
            self.app.notify("nothing to export yet", severity="warning", timeout=3)
            return []
        target = Path.cwd() if directory is None else directory
        try:
            paths = await asyncio.to_thread(write_exports, record, target, formats)
        except OSError as exc:
            self.app.notify(f"export failed: {exc}", severity="error")
            return []
        self.app.notify(f"exported to {', '.join(p.name for p in paths)} in {target}", timeout=6)
        return paths

    def sessions_screen(self) -> None:
        """Show every saved chat; the one chosen opens in a tab."""

        async def chosen(record: SessionRecord | None) -> None:
            if record is not None:
                await self.open_record(record)

        screen = SessionsScreen(
            self.history.writer,
            self.history.note,
            is_open_here=self.is_open_here,
            on_renamed=self.recorder.renamed,
            reopen_flag=self.reopen,
        )
        self.app.push_screen(screen, chosen)

    def copy_message(self) -> None:
        """Pick one message of the active chat and copy it to the clipboard."""
        pane = self.app.active_pane()
        messages = list(pane.session.messages) if pane is not None else []
        if not messages:
            self.app.notify("no message to copy yet", severity="warning", timeout=2)
            return

        def chosen(index: int | None) -> None:
            if index is not None:
                text = messages[index]["content"]
                self.app.copy_to_clipboard(text)
                self.app.notify(f"copied {len(text):,} characters", timeout=2)

        self.app.push_screen(MessagePicker(messages), chosen)
