"""The dashboard: engine header, KV block heat map, prefix cache, preemptions, per-step batch, policy switch."""

from __future__ import annotations

import contextlib
import time

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.widgets import Button, Static

from nanovllm_tui.app.render import gauge, heat_map, legend, spark
from nanovllm_tui.app.session import session_of
from nanovllm_tui.app.stats_window import StatsWindow
from nanovllm_tui.engine.serving.protocol import EngineInfo
from nanovllm_tui.engine.stats import CACHED, FREE, USED, BlockMap

LABEL = 11  # width of the label column in the sparkline sections
VALUE = 9  # width of the value column


class Section(Static):
    """A bordered block of dashboard text with a title."""

    def __init__(self, title: str, **kwargs):
        super().__init__(**kwargs)
        self.border_title = title


class Dashboard(Vertical):
    """Everything the engine is doing, redrawn from a StatsWindow by `show` (called on the app's timer)."""

    def __init__(self, info: EngineInfo, **kwargs):
        super().__init__(**kwargs)
        self.info = info

    def compose(self) -> ComposeResult:
        yield Section("engine", id="dash-header", classes="dash-section")
        with Vertical(id="dash-blocks", classes="dash-section") as blocks:
            blocks.border_title = "KV blocks"
            yield Static(id="blocks-map")
            yield Static(id="blocks-legend")
            yield Static(id="blocks-usage")
        yield Section("prefix cache", id="dash-prefix", classes="dash-section")
        yield Section("preemptions", id="dash-preempt", classes="dash-section")
        yield Section("batch per step", id="dash-batch", classes="dash-section")
        with Horizontal(id="dash-policy"):
            yield Static("policy", id="policy-label")
            yield Button("mixed", id="policy-mixed", compact=True)
            yield Button("prefill_first", id="policy-prefill_first", compact=True)

    async def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id and event.button.id.startswith("policy-"):
            event.stop()
            await self.app.run_action(f"set_policy('{event.button.id.removeprefix('policy-')}')")

    def on_resize(self) -> None:
        redraw = getattr(self.app, "request_redraw", None)
        if redraw is not None:  # sizes changed: the heat map and sparklines need a new layout
            redraw()

    def show(self, window: StatsWindow, sessions: list[int], now: float | None = None) -> None:
        """Redraw every section from the window (cheap: a few Rich Texts)."""
        with contextlib.suppress(NoMatches):  # not composed yet (its screen is being pushed); the next tick draws it
            self._show(window, sessions, now)

    def _show(self, window: StatsWindow, sessions: list[int], now: float | None) -> None:
        now = time.monotonic() if now is None else now
        info, latest = self.info, window.latest
        policy = window.policy or (latest.policy if latest else "?")
        self.query_one("#dash-header", Static).update(self._header(info, policy))
        self._show_blocks(window, sessions)
        inner = max(10, self.query_one("#dash-prefix").content_size.width)
        spark_w = max(4, inner - LABEL - VALUE)
        self.query_one("#dash-prefix", Static).update(self._prefix(window, inner, spark_w))
        self.query_one("#dash-preempt", Static).update(self._preemptions(window, spark_w))
        self.query_one("#dash-batch", Static).update(self._batch(window, spark_w, now))
        for name in ("mixed", "prefill_first"):
            self.query_one(f"#policy-{name}", Button).variant = "primary" if name == policy else "default"

    @staticmethod
    def _header(info: EngineInfo, policy: str) -> Text:
        t = Text()
        t.append(info.model, "bold").append(f"  ·  {info.device} · {info.dtype} · TP {info.tensor_parallel_size}\n")
        t.append(
            f"block {info.block_size} tok · {info.num_blocks:,} blocks · max len {info.max_model_len:,} · policy "
        ).append(policy, "bold")
        if not info.prefix_caching:
            t.append(" · prefix cache off")
        return t

    def _show_blocks(self, window: StatsWindow, sessions: list[int]) -> None:
        view = self.query_one("#blocks-map", Static)
        width, height = max(1, view.content_size.width), max(1, view.content_size.height)
        latest, totals = window.latest, window.totals
        block_map = window.block_map
        if block_map is not None and totals is not None and totals.num_blocks_used == 0:
            # The service publishes no StepStats for a step that only finished aborts, so the last map can
            # still show an aborted request's blocks; the live counters say none are used: show them released.
            released = CACHED if self.info.prefix_caching else FREE
            block_map = BlockMap(
                bytes(released if s >= USED else s for s in block_map.states), (None,) * len(block_map.owners)
            )
        if block_map is not None:
            text, per_cell = heat_map(block_map, width, height, session_of)
            view.update(text)
            has_other = any(o is not None and session_of(o) is None for o in block_map.owners)
        else:
            per_cell, has_other = 1, False
            view.update(Text("(no block map yet)", style="dim"))
        self.query_one("#blocks-legend", Static).update(legend(sessions, has_other))
        # The cumulative snapshot is read live each tick, so it is never older than the last step.
        src = totals or latest
        usage = src.kv_cache_usage_perc if src else 0.0
        used = src.num_blocks_used if src else 0
        cached = src.num_blocks_cached if src else 0
        total = src.num_blocks_total if src else self.info.num_blocks
        bar_w = max(4, width - 40)
        line = Text("usage ").append_text(gauge(usage, bar_w))
        line.append(f" {usage:4.0%}  used {used:,}/{total:,} cached {cached:,}")
        if per_cell > 1:
            line.append(f"  (1 cell = {per_cell} blocks)", style="dim")
        self.query_one("#blocks-usage", Static).update(line)

    @staticmethod
    def _prefix(window: StatsWindow, inner: int, spark_w: int) -> Text:
        totals = window.totals
        q = totals.prefix_cache_queries if totals else 0
        h = totals.prefix_cache_hits if totals else 0
        rate = h / q if q else 0.0
        t = Text("hit rate".ljust(LABEL)).append_text(gauge(rate, spark_w, "#4ea1ff")).append(f" {rate:6.1%}\n")
        t.append("per step".ljust(LABEL)).append_text(spark(window.hit_rate_series(), spark_w, "#4ea1ff", hi=1.0))
        t.append("\n").append(f"hits {h:,} / queries {q:,} tokens"[:inner])
        return t

    @staticmethod
    def _preemptions(window: StatsWindow, spark_w: int) -> Text:
        total = window.totals.num_preemptions if window.totals else 0
        t = Text("total".ljust(LABEL)).append(f"{total:<{VALUE},}", "bold #ff5f5f" if total else "")
        t.append("\n").append("per step".ljust(LABEL))
        t.append_text(spark(window.series("num_preemptions"), spark_w, "#ff5f5f"))
        events = list(window.events)[-3:]
        for e in events:
            t.append("\n").append(time.strftime("%H:%M:%S", time.localtime(e.wall_time)), "dim")
            t.append(f"  step {e.step:<6} preempted ").append(e.request_id, "bold")
        if not events:
            t.append("\n").append("none yet", "dim")
        return t

    @staticmethod
    def _batch(window: StatsWindow, spark_w: int, now: float) -> Text:
        rows = [
            ("seqs/step", "num_seqs", "#5fd75f", ""),
            ("prefill tok", "num_prefill_tokens", "#f0a030", ""),
            ("decode tok", "num_decode_tokens", "#4ea1ff", ""),
        ]
        t = Text()
        for label, name, style, _ in rows:
            values = window.series(name)
            t.append(label.ljust(LABEL)).append_text(spark(values, spark_w, style))
            t.append(f" {int(values[-1]) if values else 0:>{VALUE - 1},}\n")
        durations = [d * 1000 for d in window.series("duration")]
        t.append("step ms".ljust(LABEL)).append_text(spark(durations, spark_w, "#d75fd7"))
        t.append(f" {durations[-1] if durations else 0:>{VALUE - 1}.1f}\n")
        prefill_tps, decode_tps = window.rates(now)
        t.append(f"tok/s      prefill {prefill_tps:,.0f}  decode {decode_tps:,.0f}\n")
        running, waiting = window.running_waiting()
        steps = window.totals.num_steps if window.totals else 0
        t.append(f"running {running}  waiting {waiting}  steps {steps:,}")
        return t
