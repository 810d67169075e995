"""The nanovllm-tui command line: bad flags and --model paths fail before any UI, and without a terminal the app
refuses at once; each with exit 2 and exactly one stderr line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """The CLI with stdin, stdout and stderr on pipes (no terminal)."""
    return subprocess.run(
        [sys.executable, "-m", "nanovllm_tui.app.cli", *args],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_on_terminals(
    cmd: list[str], timeout: float = 180, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """cmd with stdin and stdout on one pseudo-terminal and stderr on another (the app draws on stderr, so it
    must be a terminal too); `stdout` is what the first terminal got, `stderr` the second, both decoded.

    For runs that fail while loading: the app never starts, so nothing waits for keys."""
    terminals = [os.openpty(), os.openpty()]
    got = [bytearray(), bytearray()]

    def drain(controller: int, into: bytearray) -> None:
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the terminal's last writer closed it
                return
            if not chunk:
                return
            into.extend(chunk)

    readers = [threading.Thread(target=drain, args=(c, g), daemon=True) for (c, _), g in zip(terminals, got)]
    for r in readers:
        r.start()
    (_, out), (_, err) = terminals
    try:
        proc = subprocess.run(cmd, cwd=ROOT, stdin=out, stdout=out, stderr=err, timeout=timeout, env=env)
    finally:
        for _, terminal in terminals:
            os.close(terminal)
    for r in readers:
        r.join(10)
    for controller, _ in terminals:
        os.close(controller)
    text = [bytes(g).decode(errors="replace").replace("\r\n", "\n") for g in got]
    return subprocess.CompletedProcess(cmd, proc.returncode, text[0], text[1])


def run_cli_on_terminal(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """The CLI on terminals (see run_on_terminals), so it gets past the terminal check."""
    return run_on_terminals([sys.executable, "-m", "nanovllm_tui.app.cli", *args], timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def copy_model(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        if f.is_file() and not any(f.name.startswith(s) or f.name.endswith(s) for s in skip):
            shutil.copy(f, dst / f.name)
    return dst


def edit_config(path: Path, **changes) -> None:
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


def test_help_and_version():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for flag in (
        "--model",
        "--device",
        "--dtype",
        "--max-model-len",
        "--block-size",
        "--num-kvcache-blocks",
        "--kv-cache-memory",
        "--gpu-memory-utilization",
        "--max-num-seqs",
        "--max-num-batched-tokens",
        "--policy",
        "--no-prefix-caching",
        "--enforce-eager",
        "--tensor-parallel-size",
        "--attention-backend",
        "--torch-threads",
        "--engine-thread",
        "--debug",
        "--version",
    ):
        assert flag in proc.stdout
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("nanovllm-tui ")


def test_missing_dir(tmp_path):
    assert_one_line_error(run_cli("--model", str(tmp_path / "nope")), "does not exist", "--model")


def test_no_config(tmp_path):
    assert_one_line_error(run_cli("--model", str(tmp_path)), "config.json")


def test_unsupported_architecture(tmp_path, tiny_qwen3_gqa_dir):
    model = copy_model(tiny_qwen3_gqa_dir, tmp_path / "m")
    edit_config(model, architectures=["GPT2LMHeadModel"])
    assert_one_line_error(run_cli("--model", str(model)), "unsupported architecture", "GPT2LMHeadModel")


def test_no_weights(tmp_path, tiny_qwen3_gqa_dir):
    model = copy_model(tiny_qwen3_gqa_dir, tmp_path / "m", skip=(".safetensors",))
    assert_one_line_error(run_cli("--model", str(model)), "safetensors")


def test_no_tokenizer(tmp_path, tiny_qwen3_gqa_dir):
    model = copy_model(tiny_qwen3_gqa_dir, tmp_path / "m", skip=("tokenizer", "special_tokens", "vocab", "merges"))
    assert_one_line_error(run_cli("--model", str(model)), "tokenizer")


@pytest.mark.parametrize("change", [dict(num_hidden_layers=4), dict(intermediate_size=200)])
def test_weights_not_matching_config(tmp_path, tiny_qwen3_gqa_dir, change):
    model = copy_model(tiny_qwen3_gqa_dir, tmp_path / "m")
    edit_config(model, **change)
    line = assert_one_line_error(run_cli_on_terminal("--model", str(model), "--device", "cpu"))
    assert "match" in line


def test_cache_too_small_names_the_flag(tiny_qwen3_gqa_dir):
    proc = run_cli_on_terminal(
        "--model",
        str(tiny_qwen3_gqa_dir),
        "--device",
        "cpu",
        "--block-size",
        "16",
        "--num-kvcache-blocks",
        "4",
        "--max-model-len",
        "512",
    )
    assert_one_line_error(proc, "--num-kvcache-blocks", "--max-model-len")


def test_bench_subcommand_dispatches():
    proc = run_cli("bench", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "usage" in proc.stdout.lower()


def test_mixed_prefill_tokens_flag_reaches_the_engine_options():
    from nanovllm_tui.app.cli import build_parser, engine_kwargs

    args = build_parser().parse_args(["--model", "m"])
    assert "mixed_prefill_tokens" not in engine_kwargs(args)  # the streaming service's default applies
    args = build_parser().parse_args(["--model", "m", "--mixed-prefill-tokens", "0"])
    assert engine_kwargs(args)["mixed_prefill_tokens"] == 0


def test_model_file_is_not_a_directory(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"not a model")
    assert_one_line_error(run_cli("--model", str(path)), "is a file, not a directory")


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--block-size", "17", "power of two"),
        ("--block-size", "8", ">= 16"),
        ("--max-model-len", "0", ">= 1"),
        ("--max-num-seqs", "0", ">= 1"),
        ("--max-num-batched-tokens", "-5", ">= 1"),
        ("--num-kvcache-blocks", "x", "not an integer"),
        ("--gpu-memory-utilization", "1.5", "(0, 1]"),
        ("--kv-cache-memory", "lots", "not a size"),
        ("--torch-threads", "0", ">= 1"),
    ],
)
def test_bad_numeric_flags_fail_before_loading(tmp_path, flag, value, message):
    """argparse rejects them, so even a model dir that does not exist is never looked at."""
    start = time.monotonic()
    line = assert_one_line_error(run_cli("--model", str(tmp_path / "nope"), flag, value), flag, message)
    assert "does not exist" not in line
    assert time.monotonic() - start < 30


def test_no_terminal_refuses_at_once(tiny_qwen3_gqa_dir):
    """stdin from /dev/null, stdout to a pipe: one line, exit 2, before any model is loaded."""
    start = time.monotonic()
    proc = run_cli("--model", str(tiny_qwen3_gqa_dir), "--device", "cpu", timeout=60)
    assert_one_line_error(proc, "needs a terminal", "nanovllm-tui bench")
    assert "loading" not in proc.stdout
    assert time.monotonic() - start < 30


def test_no_terminal_without_model_does_not_prepare_the_demo_model(tmp_path):
    env = {**os.environ, "NANOVLLM_TUI_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "nanovllm_tui.app.cli"],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert_one_line_error(proc, "needs a terminal")
    assert not (tmp_path / "cache").exists()


def test_stderr_not_a_terminal_refuses_at_once(tiny_qwen3_gqa_dir, tmp_path):
    """Textual draws on stderr: stdin and stdout on a terminal but stderr to a file, one line there, exit 2."""
    log = tmp_path / "err.log"
    controller, terminal = os.openpty()
    try:
        with log.open("w") as err:
            proc = subprocess.run(
                [sys.executable, "-m", "nanovllm_tui.app.cli", "--model", str(tiny_qwen3_gqa_dir)],
                cwd=ROOT,
                stdin=terminal,
                stdout=terminal,
                stderr=err,
                timeout=60,
            )
    finally:
        os.close(terminal)
        os.close(controller)
    lines = log.read_text().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, lines
    assert "stdin, stdout and stderr must be a TTY" in lines[0], lines[0]


def test_stderr_on_a_closed_pipe_exits_2_at_once(tiny_qwen3_gqa_dir):
    """The reader of stderr is gone (`nanovllm-tui 2>&1 | head -0` and the like): exit 2 quietly, never hang."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    controller, terminal = os.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "nanovllm_tui.app.cli", "--model", str(tiny_qwen3_gqa_dir)],
            cwd=ROOT,
            stdin=terminal,
            stdout=terminal,
            stderr=write_end,
            timeout=60,
        )
    finally:
        for fd in (write_end, terminal, controller):
            os.close(fd)
    assert proc.returncode == 2
