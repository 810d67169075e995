"""Printing and saving results: text tables, the --json document, the --trace JSONL of StepStats."""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform
import subprocess
from typing import Any

from nanovllm_tui.bench.floor import Floor
from nanovllm_tui.bench.results import OfflineResult, OnlineResult
from nanovllm_tui.engine.stats import StepStats


def step_record(step: StepStats) -> dict[str, Any]:
    """One StepStats as a JSON object (block map as a state string and owners, when collected)."""
    d: dict[str, Any] = {}
    for f in dataclasses.fields(step):
        value = getattr(step, f.name)
        if f.name == "block_map" and value is not None:
            value = {"states": list(value.states), "owners": list(value.owners)}
        elif isinstance(value, tuple):
            value = list(value)
        d[f.name] = value
    d["kv_cache_usage_perc"] = step.kv_cache_usage_perc
    return d


def check_writable(path: str, flag: str) -> None:
    """Fail on a bad output path before the run, not after it."""
    try:
        open(path, "a").close()
    except OSError as exc:
        raise ValueError(f"cannot write {flag} {path!r} ({exc.strerror}); pick a writable path") from exc


class TraceWriter:
    """--trace FILE: one JSON line per engine step. Steps are kept (they are immutable) and written at close(),
    so serialising them costs nothing inside the timed run."""

    def __init__(self, path: str):
        self.path = path
        check_writable(path, "--trace")
        self.steps: list[StepStats] = []

    def __call__(self, step: StepStats) -> None:
        self.steps.append(step)

    @property
    def count(self) -> int:
        return len(self.steps)

    def close(self) -> None:
        with open(self.path, "w") as f:
            for step in self.steps:
                f.write(json.dumps(step_record(step)) + "\n")


def _json_safe(value: Any) -> Any:
    """inf/nan are not JSON: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json(path: str, doc: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(_json_safe(doc), f, indent=2, default=str)
        f.write("\n")


def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def offline_table(results: list[OfflineResult]) -> str:
    """One row per engine; the last column is each engine's throughput relative to the first (ours)."""
    base = results[0].output_tok_s
    lines = [
        (
            f"{'engine':<20} {'requests':>8} {'out tokens':>11} {'seconds':>9} {'out tok/s':>11} "
            f"{'total tok/s':>12} {'errors':>6} {'vs ours':>8}"
        )
    ]
    for r in results:
        rel = r.output_tok_s / base if base else 0.0
        lines.append(
            f"{r.engine:<20} {r.num_requests:>8} {r.output_tokens:>11,} {r.seconds:>9.2f} "
            f"{r.output_tok_s:>11,.1f} {r.total_tok_s:>12,.1f} {r.num_errors:>6} {rel:>8.3f}"
        )
    ours = results[0]
    for r in results[1:]:
        if r.output_tok_s > 0:
            lines.append(f"{ours.engine} / {r.engine}: {ours.output_tok_s / r.output_tok_s:.2f}x")
    if ours.decode_tok_s_per_request_p50 is not None:
        lines.append(f"per-request decode rate ({ours.engine}, median): {ours.decode_tok_s_per_request_p50:,.1f} tok/s")
    return "\n".join(lines)


def nano_vllm_line(r: OfflineResult) -> str:
    """nano-vllm's bench.py summary line, for side-by-side reading."""
    return f"Total: {r.output_tokens}tok, Time: {r.seconds:.2f}s, Throughput: {r.output_tok_s:.2f}tok/s"


def online_table(r: OnlineResult) -> str:
    rate = "inf" if r.request_rate == math.inf else f"{r.request_rate:g}"
    cap = f", at most {r.max_concurrency} in flight" if r.max_concurrency else ""
    lines = [
        (
            f"Online ({r.policy}): {r.num_requests} requests at {rate} req/s{cap}, duration {r.duration:.2f} s, "
            f"errors {r.num_errors}"
        ),
        (
            f"  request throughput {r.request_throughput:.2f} req/s, output {r.output_tok_s:,.1f} tok/s, "
            f"mean in flight {r.mean_in_flight:.1f} (Little), mean running {_fmt(r.mean_running, 1)}"
        ),
        f"  {'ms':<6} {'mean':>9} {'p50':>9} {'p90':>9} {'p99':>9} {'max':>9}",
    ]
    for name, d in (("TTFT", r.ttft), ("ITL", r.itl), ("TPOT", r.tpot), ("E2E", r.e2e)):
        lines.append(
            f"  {name:<6} {_fmt(d.mean):>9} {_fmt(d.p50):>9} {_fmt(d.p90):>9} {_fmt(d.p99):>9} {_fmt(d.max):>9}"
        )
    if r.itl.p50 and r.itl.p99 is not None:
        lines.append(f"  ITL p99 / p50 = {r.itl.p99 / r.itl.p50:.2f}")
    if r.client_cpu_seconds is not None and r.duration > 0:
        share = r.client_cpu_seconds / r.duration
        # The client's threads share one interpreter lock: near one core, the client may be what limits the run.
        warning = "; near one core: the client may be the bottleneck" if share > 0.8 else ""
        lines.append(f"  client CPU {r.client_cpu_seconds:.2f} s = {share:.0%} of one core over the run{warning}")
    return "\n".join(lines)


def _si(x: float, unit: str) -> str:
    """1.23e13, "B" -> "12.30 TB"."""
    for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:,.2f} {prefix}{unit}"
    return f"{x:,.2f} {unit}"


def floor_table(f: Floor, seconds: float, bandwidth_source: str, compute_source: str) -> str:
    per_step = f.weight_bytes / f.decode_steps if f.decode_steps else 0
    return "\n".join(
        [
            (
                f"Floor: {f.decode_steps} decode steps x {_si(per_step, 'B')} weights + {_si(f.kv_bytes, 'B')} KV reads "
                f"= {_si(f.bytes_total, 'B')}; {_si(f.flops, 'FLOP')}"
            ),
            (
                f"  memory : {_si(f.bandwidth_gbs * 1e9, 'B/s')} ({bandwidth_source}) -> {f.memory_seconds:.4f} s = "
                f"{f.memory_tok_s:,.0f} tok/s; achieved {f.memory_seconds / seconds:.3f} of it"
            ),
            (
                f"  compute: {_si(f.peak_tflops * 1e12, 'FLOP/s')} ({compute_source}) -> {f.compute_seconds:.4f} s = "
                f"{f.compute_tok_s:,.0f} tok/s; achieved {f.compute_seconds / seconds:.3f} of it"
            ),
        ]
    )


def git_commit() -> str | None:
    """$NANOVLLM_COMMIT, or `git describe` of this checkout (a run from a modified tree says "-dirty")."""
    commit = os.environ.get("NANOVLLM_COMMIT")
    if commit:
        return commit
    try:
        return (
            subprocess.run(
                ["git", "describe", "--always", "--dirty", "--abbrev=12"],
                check=False,
                capture_output=True,
                text=True,
                timeout=5,
                cwd=os.path.dirname(os.path.abspath(__file__)),
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: Any | None = None) -> dict[str, Any]:
    """Where and with what the run happened (the --json document's "environment"); without a device (bench
    serve: the engine is elsewhere) no torch is imported."""
    env: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    if device is None:
        return env
    import torch
    import transformers

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    env.update(device=str(device), gpu=gpu, torch=torch.__version__, transformers=transformers.__version__)
    return env
