"""The dashboard on its own screen (for narrow terminals, or a bigger block map): the engine's Dashboard, or the
remote server's in attach mode (the app's backend makes the widget)."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widget import Widget

from nanovllm_tui.app.screens.side import SideScreen
from nanovllm_tui.app.widgets.footer import AppFooter


class DashboardScreen(SideScreen):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("f3", "app.pop_screen", "Back")]

    def __init__(self, dashboard: Widget):
        super().__init__()
        self.dashboard = dashboard

    def compose(self) -> ComposeResult:
        yield self.dashboard
        yield AppFooter()
