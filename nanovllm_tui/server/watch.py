"""The watch view of `nanovllm-tui serve`: the app's engine dashboard for the served engine, the HTTP requests in
flight (id, prompt/output tokens, state, TTFT) and a log of the recent ones.

Contract: like the app, the engine never waits for the UI. A timer drains the service's stats ring and the
request tracker (both lock-free or briefly locked reads) and redraws; the HTTP server runs on its own thread.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path, PurePath
from typing import Any, ClassVar

from rich.table import Table
from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, Header, RichLog, Static

from nanovllm_tui.app.stats_window import StatsWindow
from nanovllm_tui.app.widgets.dashboard import Dashboard
from nanovllm_tui.engine.serving.protocol import EngineInfo
from nanovllm_tui.server.state import ServerState
from nanovllm_tui.server.tracker import RequestRecord

POLL_HZ = 8
MAX_ROWS = 200  # in-flight rows drawn; more are summarised in the panel's title
APP_TCSS = Path(__file__).resolve().parent.parent / "app" / "app.tcss"  # the dashboard's own styles
STATE_STYLES = {"waiting": "yellow", "running": "green", "stop": "dim", "length": "dim", "abort": "red", "error": "bold red"}  # fmt: skip


def header_info(state: ServerState) -> EngineInfo:
    """The dashboard header: the service's EngineInfo, named as the clients know the model."""
    info = state.info
    if info is None:
        raise RuntimeError("the watch view needs an attached engine; call ServerState.attach first")
    return dataclasses.replace(info, model=state.served_model_name)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}s"


def in_flight_table(records: list[RequestRecord], now: float) -> Table:
    """The requests in flight, oldest first."""
    table = Table(expand=True, box=None, pad_edge=False, header_style="bold")
    for name, justify in (("id", "left"), ("kind", "left"), ("prompt", "right"), ("output", "right"), ("state", "left"), ("TTFT", "right"), ("age", "right")):  # fmt: skip
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for r in records[:MAX_ROWS]:
        table.add_row(
            r.request_id,
            r.kind,
            f"{r.prompt_tokens:,}",
            f"{r.output_tokens:,}",
            Text(r.state, STATE_STYLES.get(r.state, "")),
            _seconds(r.ttft),
            f"{now - r.arrival_time:.1f}s",
        )
    return table


def log_text(record: RequestRecord) -> Text:
    """One finished request in the log: wall-clock time, then its log line with the status coloured."""
    t = Text(time.strftime("%H:%M:%S "), "dim")
    t.append(record.request_id, "bold").append(" ").append(record.state, STATE_STYLES.get(record.state, ""))
    t.append(
        f"  {record.kind}  prompt {record.prompt_tokens:,}  output {record.output_tokens:,}"
        f"  ttft {_seconds(record.ttft)}  e2e {_seconds(record.e2e)}"
    )
    if record.error:
        t.append(f"  {' '.join(record.error.split())}", "red")
    return t


class WatchApp(App[None]):
    """Dashboard on the left; requests in flight and the request log on the right."""

    CSS_PATH: ClassVar[list[str | PurePath]] = [APP_TCSS, "watch.tcss"]
    TITLE = "nanovllm-tui serve"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"),
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True),
        Binding("f4", "toggle_policy", "Policy"),
    ]

    def __init__(self, state: ServerState, service: Any, url: str, poll_hz: float = POLL_HZ):
        super().__init__()
        self.state = state
        self.service = service
        self.url = url
        self.poll_hz = poll_hz
        self.info = header_info(state)
        self.window = StatsWindow()
        self.policy = state.info.scheduling_policy if state.info is not None else "mixed"
        self.window.policy = self.policy
        self._seen_finished = 0

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="watch-main"):
            yield Dashboard(self.info, id="watch-dashboard")
            with Vertical(id="watch-requests"):
                panel = Static(id="in-flight", classes="watch-section")
                panel.border_title = "requests in flight"
                yield panel
                log = RichLog(id="request-log", classes="watch-section", max_lines=500, wrap=False)
                log.border_title = "recent requests"
                yield log
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.sub_title = f"{self.state.served_model_name} · {self.url}"
        self.service.set_block_map(True)
        self.set_interval(1 / self.poll_hz, self.refresh_view)
        self.refresh_view()

    def request_redraw(self) -> None:
        """Called by the dashboard on resize; every tick redraws anyway."""

    def refresh_view(self) -> None:
        """One tick: new engine steps into the dashboard, the in-flight panel, newly finished requests into the log."""
        now = time.monotonic()
        self.window.add(self.service.stats_history(since_step=self.window.last_step), self.service.stats())
        self.query_one(Dashboard).show(self.window, [], now)
        live = self.state.tracker.in_flight()
        panel = self.query_one("#in-flight", Static)
        panel.border_title = f"requests in flight: {len(live)}"
        panel.update(in_flight_table(live, now) if live else Text("none", "dim"))
        finished, self._seen_finished = self.state.tracker.finished_since(self._seen_finished)
        log = self.query_one("#request-log", RichLog)
        for record in finished:
            log.write(log_text(record))
        status = self.state.status
        if status != "ready":
            self.sub_title = f"{self.state.served_model_name} · {self.url} · engine {status}"

    def action_set_policy(self, policy: str) -> None:
        try:
            self.service.set_scheduling_policy(policy)
        except (ValueError, RuntimeError) as exc:
            self.notify(str(exc), severity="error")
            return
        self.policy = self.window.policy = policy
        self.notify(f"scheduling policy: {policy}", timeout=2)

    def action_toggle_policy(self) -> None:
        self.action_set_policy("prefill_first" if self.policy == "mixed" else "mixed")


def run_watch(state: ServerState, service: Any, url: str) -> None:
    """Run the watch view on this (the main) thread until the user quits or SIGINT/SIGTERM arrives."""
    WatchApp(state, service, url).run()
