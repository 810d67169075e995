"""RemoteBackend: the app's backend in attach mode (see app/backend.py's AppBackend): chats over the server's
OpenAI API, the RemoteDashboard fed from the poller's latest snapshot, and no engine controls: a remote server
exports no block map or steps, and offers no policy switch, prefix-cache reset or benchmark here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.screen import Screen
from textual.widget import Widget

from nanovllm_tui.app.screens.dashboard import DashboardScreen
from nanovllm_tui.remote.dashboard import RemoteDashboard, RemoteHistory
from nanovllm_tui.remote.poller import CONNECTING, OK, PollStatus
from nanovllm_tui.remote.service import RemoteInfo, RemoteService
from nanovllm_tui.remote.snapshot import RemoteSnapshot

if TYPE_CHECKING:
    from nanovllm_tui.app.stats_window import StatsWindow
    from nanovllm_tui.bench.driver import BenchRun, WorkloadSpec

NOT_AVAILABLE = "not available when attached to a remote server"
# App actions that need the engine in this process (their keys and palette entries are hidden in attach mode).
ENGINE_ONLY = frozenset({"set_policy", "toggle_policy", "benchmark"})
HELP_NOTE = f"""
**Attached to a remote server**: the dashboard shows the server's `/metrics` (polled); the scheduling policy
(f4), the benchmark (f5), the KV block map and the prefix-cache reset are {NOT_AVAILABLE}.
"""


class RemoteBackend:
    """A vLLM-compatible server: its polls are kept in one RemoteHistory that every RemoteDashboard draws."""

    help_note = HELP_NOTE
    window: StatsWindow | None = None  # a remote server exports no per-step stats
    policy: str | None = None  # nor its scheduling policy

    def __init__(self, service: RemoteService):
        self.service = service
        self.info: RemoteInfo = service.info()
        self.subtitle = f"{self.info.model} @ {self.info.url}"
        self.history = RemoteHistory()  # shared, so a dashboard that was hidden has no gap in its sparklines
        self._seen: tuple[PollStatus, RemoteSnapshot | None] | None = None

    def offers(self, action: str) -> bool:
        return action not in ENGINE_ONLY

    def dashboard(self, widget_id: str) -> Widget:
        return RemoteDashboard(self.info, self.history, id=widget_id)

    def screens(self) -> dict[str, Screen]:
        return {"dashboard": DashboardScreen(self.dashboard("full-dashboard"))}

    def poll(self) -> bool:
        status, snap = self.service.status, self.service.snapshot()
        self.history.add(snap)
        seen = self._seen
        self._seen = (status, snap)
        return seen is None or seen[0] != status or seen[1] is not snap

    def show(self, screen: Screen, sessions: list[int], now: float) -> None:
        status, snap = self.service.status, self.service.snapshot()
        for dash in screen.query(RemoteDashboard):
            if dash.display:
                dash.show(status, snap)

    def banner(self) -> str | None:
        status = self.service.status
        if status.state in (OK, CONNECTING) or not status.message:
            return None
        return status.message

    def set_policy(self, policy: str) -> None:
        raise RuntimeError(f"the scheduling policy is {NOT_AVAILABLE}")

    def benchmark(self, spec: WorkloadSpec, run_id: str) -> BenchRun:
        raise RuntimeError(f"the benchmark is {NOT_AVAILABLE}")
