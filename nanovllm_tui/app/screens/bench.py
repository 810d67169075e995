"""The benchmark screen: a workload form, a progress bar and a result table; the run goes through the same
engine service as the chats (which keep working and join the batch) while the dashboard beside it animates."""

from __future__ import annotations

import contextlib
from typing import ClassVar, Protocol, runtime_checkable

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Horizontal, Vertical
from textual.css.query import NoMatches
from textual.widgets import Button, DataTable, Input, Label, ProgressBar, Select, Static

from nanovllm_tui.app.screens.side import SideScreen
from nanovllm_tui.app.widgets.dashboard import Dashboard
from nanovllm_tui.app.widgets.footer import AppFooter
from nanovllm_tui.bench.driver import BenchResult, BenchRun, WorkloadSpec
from nanovllm_tui.engine.serving.protocol import EngineInfo

ARRIVALS = [("all at once", "all"), ("Poisson", "poisson")]


@runtime_checkable
class BenchHost(Protocol):
    """The app around the screen: it owns the run (so the run outlives the screen)."""

    def start_benchmark(self, spec: WorkloadSpec) -> None: ...

    def stop_benchmark(self) -> None: ...


def parse_range(text: str, name: str) -> tuple[int, int]:
    """ "32-128" or "64" -> (low, high); ValueError names the field."""
    parts = [p.strip() for p in text.replace("–", "-").split("-")]
    try:
        nums = [int(p) for p in parts if p]
    except ValueError:
        raise ValueError(f"{name} {text!r}: write min-max, e.g. 32-128") from None
    if len(nums) == 1:
        nums *= 2
    if len(nums) != 2:
        raise ValueError(f"{name} {text!r}: write min-max, e.g. 32-128")
    return nums[0], nums[1]


class BenchScreen(SideScreen):
    """Shows the app's current BenchRun (the app owns it, so it keeps running when this screen is closed)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+s", "run", "Run"),
        Binding("ctrl+x", "stop_run", "Stop run", priority=True),  # before the focused Input's cut
    ]

    def __init__(self, info: EngineInfo):
        super().__init__()
        self.info = info
        self._shown_result: BenchRun | None = None

    def compose(self) -> ComposeResult:
        with Horizontal(id="bench-body"):
            with Vertical(id="bench-left") as left:
                left.border_title = "benchmark workload"
                with Grid(id="bench-form"):
                    yield Label("requests")
                    yield Input("16", id="bench-requests", compact=True)
                    yield Label("prompt tokens")
                    yield Input("32-128", id="bench-prompt", compact=True)
                    yield Label("output tokens")
                    yield Input("16-64", id="bench-output", compact=True)
                    yield Label("arrivals")
                    yield Select(ARRIVALS, value="all", allow_blank=False, id="bench-arrival", compact=True)
                    yield Label("rate (req/s)")
                    yield Input("4", id="bench-rate", compact=True)
                with Horizontal(id="bench-buttons"):
                    yield Button("Run (ctrl+s)", variant="primary", id="bench-run", compact=True)
                    yield Button("Stop (ctrl+x)", id="bench-stop", compact=True)
                yield ProgressBar(total=1, id="bench-progress", show_eta=False)  # a total: no idle animation
                yield Static(id="bench-status")
                yield DataTable(id="bench-results", show_cursor=False, zebra_stripes=True)
            yield Dashboard(self.info, id="bench-dashboard")
        yield AppFooter()

    def on_mount(self) -> None:
        table = self.query_one("#bench-results", DataTable)
        table.add_columns("metric", "value")
        self.show_run(getattr(self.app, "bench_run", None))

    def on_screen_resume(self) -> None:
        self.show_run(getattr(self.app, "bench_run", None))

    def read_spec(self) -> WorkloadSpec:
        def field(name: str) -> str:
            return self.query_one(f"#bench-{name}", Input).value.strip()

        try:
            num = int(field("requests"))
        except ValueError:
            raise ValueError(f"requests {field('requests')!r} must be an integer") from None
        rate = float("inf")
        if self.query_one("#bench-arrival", Select).value == "poisson":
            try:
                rate = float(field("rate"))
            except ValueError:
                raise ValueError(f"rate {field('rate')!r} must be a number (requests/s)") from None
        spec = WorkloadSpec(
            num, parse_range(field("prompt"), "prompt tokens"), parse_range(field("output"), "output tokens"), rate
        )
        spec.validate(self.info.max_model_len)
        return spec

    def action_run(self) -> None:
        try:
            spec = self.read_spec()
        except ValueError as exc:
            self.query_one("#bench-status", Static).update(Text(str(exc), style="bold red"))
            return
        self.host.start_benchmark(spec)

    def action_stop_run(self) -> None:
        self.host.stop_benchmark()

    @property
    def host(self) -> BenchHost:
        app = self.app
        if not isinstance(app, BenchHost):
            raise TypeError("BenchScreen needs an app with start_benchmark / stop_benchmark (NanoVllmApp)")
        return app

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.action_run() if event.button.id == "bench-run" else self.action_stop_run()

    def on_input_submitted(self) -> None:
        self.action_run()

    def show_run(self, run: BenchRun | None) -> None:
        """Progress and, once finished, the result table (called on the app's timer while visible)."""
        if run is None:
            return
        with contextlib.suppress(NoMatches):  # still being composed; the next tick shows it
            self._show_run(run)

    def _show_run(self, run: BenchRun) -> None:
        bar = self.query_one("#bench-progress", ProgressBar)
        done = run.num_finished
        bar.update(total=run.total, progress=done)
        status = self.query_one("#bench-status", Static)
        if run.submit_error:
            status.update(Text(f"stopped: {run.submit_error}", style="bold red"))
        elif run.end_time is None:
            status.update(f"{run.run_id}: {done}/{run.total} requests finished…")
        else:
            status.update(f"{run.run_id}: done, {done}/{run.total} requests")
            if self._shown_result is not run:
                self._shown_result = run
                self._fill_table(run.result())

    def _fill_table(self, r: BenchResult) -> None:
        table = self.query_one("#bench-results", DataTable)
        table.clear()
        rows: list[tuple[str, str]] = [
            ("requests", f"{r.finished}/{r.requests}"),
            ("prompt tokens", f"{r.prompt_tokens:,}"),
            ("output tokens", f"{r.output_tokens:,}"),
            ("seconds", f"{r.seconds:.2f}"),
            ("throughput", f"{r.throughput:,.1f} tok/s"),
            ("TTFT p50 / p99", f"{r.ttft_p50 * 1000:.0f} / {r.ttft_p99 * 1000:.0f} ms"),
            ("ITL p50 / p99", f"{r.itl_p50 * 1000:.1f} / {r.itl_p99 * 1000:.1f} ms"),
            ("preemptions", f"{r.preemptions}"),
            ("prefix hit rate", f"{r.prefix_hit_rate:.1%}"),
        ]
        for name, value in rows:
            table.add_row(name, value)
