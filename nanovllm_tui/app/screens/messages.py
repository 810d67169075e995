"""Pick one message of the current chat (to copy it to the clipboard): a list of its turns, newest last."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from nanovllm_tui.app.text import inert

PREVIEW_CHARS = 90


def preview(role: str, text: str) -> Text:
    """One line for a message: who, then the start of its first non-empty line."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "(empty)")
    if len(line) > PREVIEW_CHARS:
        line = line[: PREVIEW_CHARS - 1] + "…"
    who = "you" if role == "user" else role
    return Text.assemble((f"{who:>9}  ", "bold"), inert(line))


class MessagePicker(ModalScreen[int | None]):
    """The chat's messages; enter returns the index of the highlighted one, esc None."""

    CSS_PATH = "sessions.tcss"
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, messages: list[dict[str, str]], title: str = "Copy a message"):
        super().__init__(classes="history-dialog-screen")
        self.messages = messages
        self.title_text = title

    def compose(self) -> ComposeResult:
        with Vertical(classes="history-dialog") as dialog:
            dialog.border_title = self.title_text
            options = [Option(preview(m["role"], m["content"])) for m in self.messages]
            yield OptionList(*options, id="messages-list")
            yield Static(Text("enter copies · esc cancels", style="dim"))

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        options.highlighted = len(self.messages) - 1 if self.messages else None
        options.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(event.option_index)

    def action_cancel(self) -> None:
        self.dismiss(None)
