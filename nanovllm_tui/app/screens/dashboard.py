"""The dashboard on its own screen (for narrow terminals, or a bigger block map)."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import Footer

from nanovllm_tui.app.widgets.dashboard import Dashboard
from nanovllm_tui.engine.serving.protocol import EngineInfo


class DashboardScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "Back to chat"),
        Binding("f3", "app.pop_screen", "Back"),
    ]

    def __init__(self, info: EngineInfo):
        super().__init__()
        self.info = info

    def compose(self) -> ComposeResult:
        yield Dashboard(self.info, id="full-dashboard")
        yield Footer(compact=True)
