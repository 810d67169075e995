"""The nanovllm-tui command line: bad --model paths fail before any UI with exit 2 and exactly one stderr line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nanovllm_tui.app.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


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
        "--debug",
        "--version",
    ):
        assert flag in proc.stdout
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("nanovllm-tui ")


def test_missing_dir(tmp_path):
    assert_one_line_error(run_cli("--model", str(tmp_path / "nope")), "no such directory")


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
    line = assert_one_line_error(run_cli("--model", str(model), "--device", "cpu"))
    assert "match" in line


def test_cache_too_small_names_the_flag(tiny_qwen3_gqa_dir):
    proc = run_cli(
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
