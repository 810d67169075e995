"""AppBackend: what NanoVllmApp runs over: an engine Service here, or a remote server (attach mode).

The app asks its backend for the dashboard widget and the extra screens, feeds the dashboards on its timer
(poll, then show), asks which actions are offered (a remote server has no policy switch, block map, prefix-cache
reset or benchmark) and what banner line to show while something is wrong. Chats go to the service either way.
Nothing here blocks the UI thread: a local service's stats are in memory, and a remote server's figures are its
poller thread's latest scrape.
"""

from __future__ import annotations

import dataclasses
from pathlib import PurePath
from typing import Protocol

from textual.screen import Screen
from textual.widget import Widget

from nanovllm_tui.app.screens.bench import BenchScreen
from nanovllm_tui.app.screens.dashboard import DashboardScreen
from nanovllm_tui.app.stats_window import StatsWindow
from nanovllm_tui.app.widgets.dashboard import Dashboard
from nanovllm_tui.bench.driver import BenchRun, WorkloadSpec
from nanovllm_tui.engine.serving.protocol import EngineInfo, Service
from nanovllm_tui.engine.stats import EngineStats
from nanovllm_tui.remote.backend import RemoteBackend
from nanovllm_tui.remote.service import RemoteInfo, RemoteService


class AppBackend(Protocol):
    """The app's view of where chats run and what the dashboards show."""

    @property
    def info(self) -> EngineInfo | RemoteInfo:
        """The dashboard header; `.model` also names saved chats."""
        ...

    @property
    def subtitle(self) -> str: ...

    @property
    def help_note(self) -> str:
        """Markdown added to the help screen ('' for none)."""
        ...

    @property
    def window(self) -> StatsWindow | None:
        """The engine's per-step stats (None when attached: a remote server exports no steps)."""
        ...

    @property
    def policy(self) -> str | None:
        """The scheduling policy (None when it cannot be known or switched)."""
        ...

    def offers(self, action: str) -> bool:
        """False for an app action this backend cannot do (its key and palette entry are hidden)."""
        ...

    def dashboard(self, widget_id: str) -> Widget:
        """A new dashboard widget for the main screen or the dashboard screen."""
        ...

    def screens(self) -> dict[str, Screen]:
        """The screens to install by name (always "dashboard"; "bench" where a benchmark can run)."""
        ...

    def poll(self) -> bool:
        """Take the figures that arrived since the last poll; True if the dashboards have news to draw."""
        ...

    def show(self, screen: Screen, sessions: list[int], now: float) -> None:
        """Redraw the visible dashboards on `screen`."""
        ...

    def banner(self) -> str | None:
        """One line for the main screen while something is wrong (server unreachable, key rejected, engine gone)."""
        ...

    def set_policy(self, policy: str) -> None:
        """Switch the scheduling policy; ValueError for an unknown one, RuntimeError where it cannot be switched."""
        ...

    def benchmark(self, spec: WorkloadSpec, run_id: str) -> BenchRun:
        """A new benchmark run (not started); RuntimeError where none can run."""
        ...


class LocalBackend:
    """An engine Service of this app: StepStats drained into a StatsWindow, the block map on, every action offered."""

    help_note = ""

    def __init__(self, service: Service, info: EngineInfo | None = None):
        if info is None:
            info = service.engine_info()
            info = dataclasses.replace(info, model=PurePath(info.model).name or info.model)
        self.service = service
        self.info = info
        self.subtitle = f"{info.model} · {info.device}"
        self.window = StatsWindow()
        self.policy: str | None = info.scheduling_policy
        self.window.policy = self.policy
        self._last_totals: EngineStats | None = None
        service.set_block_map(True)

    def offers(self, action: str) -> bool:
        return True

    def dashboard(self, widget_id: str) -> Widget:
        return Dashboard(self.info, id=widget_id)

    def screens(self) -> dict[str, Screen]:
        return {"bench": BenchScreen(self.info), "dashboard": DashboardScreen(self.dashboard("full-dashboard"))}

    def poll(self) -> bool:
        totals = self.service.stats()
        new = self.window.add(self.service.stats_history(since_step=self.window.last_step), totals)
        news = bool(new) or totals is not self._last_totals
        self._last_totals = totals
        return news

    def show(self, screen: Screen, sessions: list[int], now: float) -> None:
        for dash in screen.query(Dashboard):
            if dash.display:
                dash.show(self.window, sessions, now)

    def banner(self) -> str | None:
        error = self.service.fatal_error
        return f"the engine stopped: {error}" if error else None

    def set_policy(self, policy: str) -> None:
        self.service.set_scheduling_policy(policy)
        self.policy = self.window.policy = policy

    def benchmark(self, spec: WorkloadSpec, run_id: str) -> BenchRun:
        return BenchRun(self.service, spec, run_id=run_id)


def backend_for(service: Service | RemoteService, info: EngineInfo | None = None) -> AppBackend:
    """The backend of `service`: attach mode for a RemoteService, else the local engine's."""
    if isinstance(service, RemoteService):
        return RemoteBackend(service)
    return LocalBackend(service, info)
