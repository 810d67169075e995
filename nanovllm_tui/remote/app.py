"""AttachApp: the Textual app of attach mode: one chat (the app's ChatPane, over RemoteService) beside the
remote dashboard. A timer drains the chat's handle and redraws the dashboard from the poller's latest figures;
all network I/O happens on RemoteService's threads, never on the UI thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Footer, Header

from nanovllm_tui.app.session import ChatSession, SessionSettings
from nanovllm_tui.app.widgets.chat import ChatPane
from nanovllm_tui.remote.dashboard import RemoteDashboard
from nanovllm_tui.remote.service import RemoteService

APP_CSS = Path(__file__).resolve().parent.parent / "app" / "app.tcss"  # the chat's styles, shared with the app
POLL_HZ = 10


class AttachApp(App[None]):
    CSS_PATH = str(APP_CSS)
    TITLE = "nanovllm-tui attach"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (120, "-wide")]  # noqa: RUF012 (Textual reads it off the class)
    BINDINGS: ClassVar = [
        Binding("escape", "stop", "Stop"),
        Binding("ctrl+r", "regenerate", "Regenerate"),
        Binding("f3", "toggle_dashboard", "Dashboard"),
    ]

    def __init__(
        self,
        service: RemoteService,
        *,
        owns_service: bool = False,
        settings: SessionSettings | None = None,
        poll_hz: float = POLL_HZ,
    ):
        super().__init__()
        self.service = service
        self.owns_service = owns_service
        self.session = ChatSession(1, settings or SessionSettings())
        self.poll_hz = poll_hz

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="main"):
            yield ChatPane(self.session, self.service, id="chat")
            yield RemoteDashboard(self.service.info(), id="side-dashboard")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        info = self.service.info()
        self.sub_title = f"{info.model} @ {info.url}"
        self.pane.prompt.focus()
        self.set_interval(1 / self.poll_hz, self._tick)

    async def on_unmount(self) -> None:
        if self.owns_service:
            self.service.shutdown()

    @property
    def pane(self) -> ChatPane:
        return self.query_one("#chat", ChatPane)

    @property
    def dashboard(self) -> RemoteDashboard:
        return self.query_one("#side-dashboard", RemoteDashboard)

    async def _tick(self) -> None:
        if not self.screen_stack:  # shutting down
            return
        await self.pane.pump(True)
        self.dashboard.show(self.service.status, self.service.snapshot())
        if self.service.fatal_error is not None:
            self.sub_title = self.service.fatal_error

    def action_stop(self) -> None:
        self.pane.stop()

    async def action_regenerate(self) -> None:
        await self.pane.regenerate()

    def action_toggle_dashboard(self) -> None:
        """Show or hide the dashboard (it is hidden on narrow terminals until asked for)."""
        self.dashboard.display = not self.dashboard.display
