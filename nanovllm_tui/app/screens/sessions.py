"""The sessions screen: every saved chat, searchable by title and text; open, rename, or delete one (confirmed);
and how many chats to reopen at start, saved in the history file (--reopen N overrides it for one run).

It reads and writes only through the history writer (futures awaited off the UI thread's critical path) and
returns the chosen chat's SessionRecord, or None.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Input, Label, Static

from nanovllm_tui.app.history.paths import REOPEN_SAVED
from nanovllm_tui.app.history.preferences import save_reopen, saved_reopen
from nanovllm_tui.app.history.records import SessionRecord
from nanovllm_tui.app.history.writer import HistoryWriter
from nanovllm_tui.app.text import inert

TIMEOUT_S = 10.0


def local_time(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


class RenameScreen(ModalScreen[str | None]):
    """Ask for a chat's new title; None when cancelled."""

    CSS_PATH = "sessions.tcss"
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str):
        super().__init__(classes="history-dialog-screen")
        self.old_title = title

    def compose(self) -> ComposeResult:
        with Vertical(classes="history-dialog") as dialog:
            dialog.border_title = "Rename chat"
            yield Input(inert(self.old_title), id="rename-input", compact=True)
            yield Static(Text("enter saves · esc cancels", style="dim"))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        title = " ".join(event.value.split())
        self.dismiss(title or None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question; True only for an explicit yes."""

    CSS_PATH = "sessions.tcss"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: str):
        super().__init__(classes="history-dialog-screen")
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="history-dialog") as dialog:
            dialog.border_title = "Confirm"
            yield Label(Text(self.question))
            with Horizontal(classes="history-buttons"):
                yield Button("Delete (y)", variant="error", id="yes")
                yield Button("Keep (n)", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class SessionsScreen(ModalScreen[SessionRecord | None]):
    """All saved chats, newest first. enter opens, f2 renames, f8 (or delete) deletes, esc closes."""

    CSS_PATH = "sessions.tcss"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Close"),
        Binding("f2", "rename", "Rename"),
        Binding("f8,delete", "delete", "Delete"),
        Binding("down", "focus_table", show=False),
    ]

    def __init__(
        self,
        writer: HistoryWriter | None,
        note: str,
        *,
        is_open_here: Callable[[str], bool] = lambda uid: False,
        on_renamed: Callable[[str, str], None] = lambda uid, title: None,
        reopen_flag: int = REOPEN_SAVED,
    ):
        super().__init__()
        self.writer = writer
        self.note = note
        self.is_open_here = is_open_here
        self.on_renamed = on_renamed
        self.reopen_flag = reopen_flag  # --reopen N of this run (REOPEN_SAVED: not given)
        self.reopen_saved: int | None = None  # the count in the file, once read
        self.records: list[SessionRecord] = []

    def compose(self) -> ComposeResult:
        with Vertical(id="sessions-dialog") as dialog:
            dialog.border_title = "Saved chats"
            with Horizontal(id="sessions-header"):
                yield Input(placeholder="search titles and messages", id="sessions-search", compact=True)
                yield Label("reopen at start:", id="sessions-reopen-label")
                yield Input(id="sessions-reopen", restrict=r"[0-9]*", max_length=3, compact=True)
            yield DataTable(id="sessions-table", cursor_type="row", zebra_stripes=True)
            yield Static(id="sessions-status")
            with Horizontal(classes="history-buttons"):
                yield Button("Open (enter)", variant="primary", id="open")
                yield Button("Rename (f2)", id="rename")
                yield Button("Delete (f8)", variant="error", id="delete")
                yield Button("Close (esc)", id="close")

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("id", "updated", "msgs", "model", "title")
        self.query_one("#sessions-search", Input).focus()
        self.reload()
        self.load_reopen()

    # -- data --------------------------------------------------------------------------------------
    async def _call(self, fn: Callable[[Any], Any]) -> Any:
        if self.writer is None:
            raise RuntimeError(self.note)
        return await asyncio.wait_for(asyncio.wrap_future(self.writer.submit(fn)), TIMEOUT_S)

    @work(exclusive=True, group="sessions-load")
    async def reload(self) -> None:
        """List the chats matching the search (a newer search cancels an older one)."""
        query = self.query_one("#sessions-search", Input).value.strip()
        if self.writer is None:
            self._status(self.note, error=True)
            return
        try:
            records = await self._call(lambda store: store.list_sessions(query))
        except Exception as exc:
            self._status(f"cannot read the history: {exc}", error=True)
            return
        self.records = records
        table = self.query_one(DataTable)
        table.clear()
        for r in records:
            table.add_row(
                str(r.id), local_time(r.updated_at), str(r.num_messages), inert(r.model), Text(inert(r.title))
            )
        found = f"{len(records)} chat{'s' if len(records) != 1 else ''}"
        self._status(f"{found} matching {query!r} · {self.note}" if query else f"{found} · {self.note}")

    @work(exclusive=True, group="sessions-reopen")
    async def load_reopen(self) -> None:
        """Show the saved count of chats to reopen (the field is off while history is)."""
        field = self.query_one("#sessions-reopen", Input)
        try:
            count = await self._call(saved_reopen)
        except Exception:  # history off or unreadable: reload() says why
            field.disabled = True
            return
        self.reopen_saved = count
        field.value = str(count)  # its Changed event matches reopen_saved: nothing is written

    @work(exclusive=True, group="sessions-reopen")
    async def store_reopen(self, text: str) -> None:
        """Save a new count of chats to reopen at start (an empty field, mid-edit, is not saved)."""
        if not text or self.reopen_saved is None or int(text) == self.reopen_saved:
            return
        count = int(text)
        try:
            await self._call(lambda store: save_reopen(store, count))
        except Exception as exc:
            self._status(f"cannot save the reopen count: {exc}", error=True)
            return
        self.reopen_saved = count
        what = f"reopen the {count} most recent open chat{'s' * (count != 1)}" if count else "start with a new chat"
        flag = f" (this run: --reopen {self.reopen_flag})" if self.reopen_flag >= 0 else ""
        self._status(f"saved: {what} at start{flag}")

    def _status(self, text: str, error: bool = False) -> None:
        self.query_one("#sessions-status", Static).update(Text(text, style="bold red" if error else "dim"))

    def selected(self) -> SessionRecord | None:
        table = self.query_one(DataTable)
        row = table.cursor_row
        return self.records[row] if self.records and 0 <= row < len(self.records) else None

    # -- actions -----------------------------------------------------------------------------------
    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "sessions-search":
            self.reload()
        elif event.input.id == "sessions-reopen":
            self.store_reopen(event.value)

    async def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if event.input.id == "sessions-reopen":  # saved as typed: enter just moves on to the list
            self.action_focus_table()
            return
        await self.action_open()

    async def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        await self.action_open()

    async def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        await self.run_action(event.button.id or "close")

    def action_focus_table(self) -> None:
        self.query_one(DataTable).focus()

    async def action_open(self) -> None:
        record = self.selected()
        if record is None or record.id is None:
            return
        sid = record.id
        try:
            full = await self._call(lambda store: store.load(sid))
        except Exception as exc:
            self._status(f"cannot open chat {sid}: {exc}", error=True)
            return
        if full is not None:
            self.dismiss(full)

    def action_rename(self) -> None:
        record = self.selected()
        if record is None or record.id is None:
            return
        sid, uid = record.id, record.uid

        async def rename(title: str | None) -> None:
            if title and title != record.title:
                await self._call(lambda store: store.rename(sid, title))
                self.on_renamed(uid, title)
                self.reload()

        self.app.push_screen(RenameScreen(record.title), rename)

    def action_delete(self) -> None:
        record = self.selected()
        if record is None or record.id is None:
            return
        if self.is_open_here(record.uid):
            self._status(f"chat {record.id} is open in a tab: close its tab first (ctrl+w)", error=True)
            return
        sid = record.id

        async def delete(yes: bool | None) -> None:
            if yes:
                await self._call(lambda store: store.delete(sid))
                self.reload()

        question = (
            f"Delete chat {sid} “{inert(record.title)}” and its {record.num_messages} messages? This cannot be undone."
        )
        self.app.push_screen(ConfirmScreen(question), delete)

    def action_close(self) -> None:
        self.dismiss(None)
