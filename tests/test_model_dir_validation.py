"""Broken model directories through `python -m nanovllm_tui.app.cli --model DIR` on a pseudo-terminal: truncated
safetensors, wrong dtypes, mismatched shapes, a missing or broken tokenizer. Each ends before any UI with one
stderr line naming the problem, exit status 2 and no traceback. (The API's messages: test_reliability_model_dir.py.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from safetensors.torch import load_file, save_file
from test_cli import ROOT, assert_one_line_error, copy_model, run_cli, run_cli_on_terminal
from test_reliability_model_dir import AS_ROOT, NO_DAC

pytestmark = pytest.mark.slow  # each case starts the CLI on a pty and loads a model

WEIGHTS = "model.safetensors"


def _rewrite(model, edit) -> None:
    tensors = load_file(str(model / WEIGHTS))
    edit(tensors)
    save_file(tensors, str(model / WEIGHTS), metadata={"format": "pt"})


@pytest.mark.parametrize("keep", [0.5, 0.001], ids=["half", "header_only"])
def test_truncated_safetensors(tmp_path, tiny_qwen3_gqa_dir, keep):
    model = copy_model(tiny_qwen3_gqa_dir, tmp_path / "m")
    data = (model / WEIGHTS).read_bytes()
    (model / WEIGHTS).write_bytes(data[: max(8, int(len(data) * keep))])
    assert_one_line_error(run_cli_on_terminal("--model", str(model), "--device", "cpu"), "truncated", WEIGHTS)


def test_integer_weights_are_rejected_not_cast(tmp_path, tiny_qwen3_gqa_dir):
    model = copy_model(tiny_qwen3_gqa_dir, tmp_path / "m")

    def to_int(tensors):
        name = next(n for n in tensors if n.endswith("q_proj.weight"))
        tensors[name] = tensors[name].to(__import__("torch").int32)

    _rewrite(model, to_int)
    assert_one_line_error(run_cli_on_terminal("--model", str(model), "--device", "cpu"), "q_proj.weight", "int32")


def test_unsupported_dtype_flag(tiny_qwen3_gqa_dir):
    # argparse rejects it: exit 2 with its usage text (two lines), and no traceback.
    proc = run_cli("--model", str(tiny_qwen3_gqa_dir), "--device", "cpu", "--dtype", "int8")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--dtype: invalid choice: 'int8'" in proc.stderr


def test_unsupported_dtype_through_the_api(tiny_qwen3_gqa_dir):
    from nanovllm_tui.engine import LLM

    with pytest.raises(ValueError, match="dtype 'int8' is not supported; use float32, bfloat16 or float16"):
        LLM(str(tiny_qwen3_gqa_dir), dtype="int8", kvcache_block_size=16, num_kvcache_blocks=8)


@pytest.mark.parametrize("target", ["q_proj.weight", "down_proj.weight", "embed_tokens.weight"])
def test_mismatched_tensor_shape(tmp_path, tiny_qwen3_gqa_dir, target):
    model = copy_model(tiny_qwen3_gqa_dir, tmp_path / "m")

    def shrink(tensors):
        name = next(n for n in tensors if n.endswith(target))
        tensors[name] = tensors[name][:-1].contiguous()

    _rewrite(model, shrink)
    line = assert_one_line_error(run_cli_on_terminal("--model", str(model), "--device", "cpu"), target.split(".")[0])
    assert "shape" in line


def test_missing_tokenizer(tmp_path, tiny_qwen3_gqa_dir):
    model = copy_model(tiny_qwen3_gqa_dir, tmp_path / "m", skip=("tokenizer", "special_tokens", "vocab", "merges"))
    assert_one_line_error(run_cli_on_terminal("--model", str(model), "--device", "cpu"), "tokenizer")


def test_corrupt_tokenizer_json(tmp_path, tiny_qwen3_gqa_dir):
    model = copy_model(tiny_qwen3_gqa_dir, tmp_path / "m")
    (model / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    assert_one_line_error(run_cli_on_terminal("--model", str(model), "--device", "cpu"), "tokenizer")


@pytest.mark.parametrize("name", ["config.json", WEIGHTS])
def test_a_fifo_in_the_model_dir_is_named_before_anything_opens_it(tmp_path, tiny_qwen3_gqa_dir, name):
    """Opening a FIFO blocks forever: the CLI's cheap checks name it (run_cli's timeout catches a hang)."""
    model = copy_model(tiny_qwen3_gqa_dir, tmp_path / "m", skip=(name,))
    os.mkfifo(model / name)
    assert_one_line_error(run_cli("--model", str(model), timeout=60), "a FIFO, not a regular file", name)


@pytest.mark.skipif(AS_ROOT and shutil.which("setpriv") is None, reason="root without setpriv reads any file")
def test_an_unreadable_model_dir_says_permission_denied(tmp_path, tiny_qwen3_gqa_dir):
    """Not 'has no config.json': the CLI says what is wrong. As root (CI), without the capabilities that let root
    read anything, so the directory's permissions apply."""
    model = copy_model(tiny_qwen3_gqa_dir, tmp_path / "m")
    model.chmod(0)
    prefix = (str(shutil.which("setpriv")), *NO_DAC) if AS_ROOT else ()
    try:
        proc = subprocess.run(
            [*prefix, sys.executable, "-m", "nanovllm_tui.app.cli", "--model", str(model)],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        model.chmod(0o755)
    line = assert_one_line_error(proc, "permission denied", str(model))
    assert "config.json" not in line
