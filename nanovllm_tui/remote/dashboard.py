"""RemoteDashboard: the dashboard of attach mode, drawn from RemoteSnapshots (no block map: a remote server
exports only its KV usage, drawn as a bar and a sparkline of past polls). A figure the server does not export
says so instead of showing a zero."""

from __future__ import annotations

from collections import deque

from rich.text import Text
from textual.widgets import Static

from nanovllm_tui.app.render import gauge, spark
from nanovllm_tui.remote.poller import OK, PollStatus
from nanovllm_tui.remote.service import RemoteInfo
from nanovllm_tui.remote.snapshot import QUANTILES, RemoteSnapshot

LABEL = 12
NOT_EXPORTED = "not exported by this server"
HISTORY = 120  # polls kept for the sparklines


class RemoteHistory:
    """The last polls' snapshots, for sparklines."""

    def __init__(self, maxlen: int = HISTORY):
        self.snaps: deque[RemoteSnapshot] = deque(maxlen=maxlen)

    def add(self, snap: RemoteSnapshot | None) -> bool:
        """Keep `snap` if it is new; True if it was."""
        if snap is None or (self.snaps and self.snaps[-1] is snap):
            return False
        self.snaps.append(snap)
        return True

    def series(self, name: str) -> list[float]:
        return [float(v) for s in self.snaps if (v := getattr(s, name)) is not None]


def render_remote(info: RemoteInfo, status: PollStatus, history: RemoteHistory, width: int) -> Text:
    """The whole dashboard as one Rich Text `width` cells wide."""
    snap = history.snaps[-1] if history.snaps else None
    bar_w, spark_w = max(4, width - LABEL - 8), max(4, width - LABEL - 12)
    t = Text()
    t.append(info.model, "bold").append(f"\n{info.url}", "dim")
    if info.max_model_len:
        t.append(f" · max len {info.max_model_len:,}", "dim")
    t.append("\n")
    if status.state != OK and status.message:
        t.append(f"⚠ {status.message}\n", "bold red")
    elif snap is None:
        t.append("waiting for the first /metrics poll…\n", "dim")
    if snap is None:
        return t
    t.append("\nKV cache  ", "bold").append("remote server: no block map\n", "dim")
    if snap.kv_cache_usage is None:
        t.append("usage".ljust(LABEL)).append(NOT_EXPORTED + "\n", "dim")
    else:
        t.append("usage".ljust(LABEL)).append_text(gauge(snap.kv_cache_usage, bar_w)).append(
            f" {snap.kv_cache_usage:5.1%}\n"
        )
        if snap.num_gpu_blocks and snap.block_size:
            used = round(snap.kv_cache_usage * snap.num_gpu_blocks)
            t.append(f"{'':{LABEL}}≈{used:,} of {snap.num_gpu_blocks:,} blocks of {snap.block_size} tokens\n", "dim")
        _row(t, "history", snap, "kv_cache_usage", lambda v: f"{v:.1%}", history, spark_w, hi=1.0)
    t.append("\nprefix cache\n", "bold")
    _row(t, "hit rate", snap, "prefix_cache_hit_rate", lambda v: f"{v:.1%}", history, spark_w, hi=1.0)
    t.append("\nrequests\n", "bold")
    _row(t, "running", snap, "num_running", str, history, spark_w)
    _row(t, "waiting", snap, "num_waiting", str, history, spark_w)
    _row(t, "preempted", snap, "preemptions", lambda v: f"{v} /poll", history, spark_w)
    t.append("\nthroughput\n", "bold")
    _row(t, "generate", snap, "generation_throughput", lambda v: f"{v:,.0f} tok/s", history, spark_w)
    _row(t, "prefill", snap, "prompt_throughput", lambda v: f"{v:,.0f} tok/s", history, spark_w)
    _row(t, "tok/step", snap, "tokens_per_iteration", lambda v: f"{v:,.1f}", history, spark_w)
    t.append("\nlatency over the last poll", "bold").append(f"  ({' / '.join(f'p{q * 100:g}' for q in QUANTILES)})\n")
    for label, name in (("TTFT", "ttft"), ("ITL", "itl")):
        t.append(label.ljust(LABEL))
        values = getattr(snap, name)
        if not snap.exported(name):
            t.append(NOT_EXPORTED, "dim")
        elif values is None:
            t.append("no new requests", "dim")
        else:
            t.append(" / ".join("–" if v is None else f"{v * 1000:,.0f} ms" for v in values))
        t.append("\n")
    return t


def _row(t: Text, label: str, snap: RemoteSnapshot, name: str, fmt, history: RemoteHistory, w: int, hi=None) -> None:
    """One figure: sparkline of past polls, then the latest value ('–' for an idle interval)."""
    t.append(label.ljust(LABEL))
    if not snap.exported(name):
        t.append(NOT_EXPORTED + "\n", "dim")
        return
    value = getattr(snap, name)
    t.append_text(spark(history.series(name), w, "#4ea1ff", hi=hi)).append(" " + ("–" if value is None else fmt(value)))
    t.append("\n")


class RemoteDashboard(Static):
    """Shows the latest poll; `show` is called on the app's timer and redraws only when something changed.
    `history` may be shared by several dashboards (the app's side one and the dashboard screen's)."""

    def __init__(self, info: RemoteInfo, history: RemoteHistory | None = None, **kwargs):
        super().__init__(**kwargs)
        self.info = info
        self.history = history if history is not None else RemoteHistory()
        self.text = Text()  # what is shown now
        self._drawn: tuple = ()

    def show(self, status: PollStatus, snap: RemoteSnapshot | None) -> None:
        self.history.add(snap)
        latest = self.history.snaps[-1] if self.history.snaps else None
        key = (status, self.content_size.width, None if latest is None else latest.time)
        if key != self._drawn:
            self._drawn = key
            self.text = render_remote(self.info, status, self.history, max(20, self.content_size.width))
            self.update(self.text)
