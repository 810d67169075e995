"""The dashboard on its own screen (for narrow terminals, or a bigger block map): the engine's Dashboard, or the
remote server's in attach mode (the app's backend makes the widget)."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer


class DashboardScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back_to_chat", "Back to chat"),
        Binding("f3", "app.pop_screen", "Back"),
    ]

    def action_back_to_chat(self) -> None:
        """Back to the chats, not to the screen below (the benchmark may have been opened from the dashboard)."""
        while len(self.app.screen_stack) > 1:
            self.app.pop_screen()

    def __init__(self, dashboard: Widget):
        super().__init__()
        self.dashboard = dashboard

    def compose(self) -> ComposeResult:
        yield self.dashboard
        yield Footer(compact=True)
