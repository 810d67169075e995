"""Start-up errors speak the caller's language: raised by the Python API they name its arguments (`device='cpu'`,
`num_kvcache_blocks=`, `model=`) and no command-line flag; shown by a CLI the same errors name its flags."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_cli import run_cli_on_terminal

from nanovllm_tui.app.engine_args import FLAG_OF, cli_message
from nanovllm_tui.engine import LLM
from nanovllm_tui.engine.config import Config
from nanovllm_tui.engine.devices import resolve_device
from nanovllm_tui.engine.execution import kv_cache
from nanovllm_tui.engine.execution.loader import load_hf_config
from nanovllm_tui.engine.execution.model_runner import ModelRunner
from nanovllm_tui.engine.tp import runner as tp_runner

ROOT = Path(__file__).resolve().parents[1]
OPTS = dict(device="cpu", kvcache_block_size=16, max_model_len=128)


def api_error(fn, *args, **kwargs) -> str:
    with pytest.raises(ValueError) as info:
        fn(*args, **kwargs)
    return str(info.value)


def assert_speaks_api(message: str, *names: str) -> None:
    assert "--" not in message, message
    for name in names:
        assert name in message, message


def test_kv_cache_errors_name_the_llm_arguments(tiny_qwen3_gqa_dir, monkeypatch):
    model = str(tiny_qwen3_gqa_dir)
    assert_speaks_api(api_error(LLM, model, **OPTS, kv_cache_memory=1), "kv_cache_memory=", "kvcache_block_size=")

    def oom(self, num_blocks):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 40.00 GiB.")

    with monkeypatch.context() as m:
        m.setattr(ModelRunner, "_bind_kv_cache", oom)
        msg = api_error(LLM, model, **OPTS, num_kvcache_blocks=1000)
    assert_speaks_api(msg, "num_kvcache_blocks=", "kv_cache_memory=", "gpu_memory_utilization=")
    # On CUDA with no memory left (the GPU faked: no other path reaches this check on a CPU machine).
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (0, 100 << 30))
    cfg = SimpleNamespace(num_kvcache_blocks=None, kv_cache_memory=None, gpu_memory_utilization=0.5)
    msg = api_error(kv_cache.num_blocks, cfg, torch.device("cuda"), 4096, lambda: 0)
    assert_speaks_api(msg, "gpu_memory_utilization=0.5", "raise gpu_memory_utilization=")


def test_device_model_and_tensor_parallel_errors_name_the_llm_arguments(tiny_qwen3_gqa_dir, tmp_path, monkeypatch):
    assert_speaks_api(api_error(load_hf_config, str(tmp_path)), "model=")
    config = Config(model=str(tiny_qwen3_gqa_dir), device="cuda", tensor_parallel_size=2)
    config.hf_config = load_hf_config(config.model)
    monkeypatch.setattr(tp_runner, "resolve_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert_speaks_api(api_error(tp_runner.check_tp_config, config), "tensor_parallel_size=2", "tensor_parallel_size=")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert_speaks_api(api_error(resolve_device, "cuda"), "device='cuda'", "device='cpu'")


@pytest.mark.parametrize(
    "message, shown",
    [
        ("no GPU is visible; use device='cpu'", "no GPU is visible; use --device cpu"),
        ("lower num_kvcache_blocks= / kv_cache_memory=", "lower --num-kvcache-blocks / --kv-cache-memory"),
        ("kv_cache_memory=1 bytes; lower kvcache_block_size=", "--kv-cache-memory 1 bytes; lower --block-size"),
        ('scheduling_policy="fifo" is unknown', "--policy fifo is unknown"),
        ("pass model= a model directory", "pass --model a model directory"),
        ("config value vocab_size=0 (max_model_len=64)", "config value vocab_size=0 (--max-model-len 64)"),
    ],
)
def test_cli_message_turns_arguments_into_flags(message, shown):
    assert cli_message(message) == shown


def test_every_translated_argument_is_an_llm_keyword_and_a_flag():
    from nanovllm_tui.app.cli import build_parser

    flags = {s for a in build_parser()._actions for s in a.option_strings}
    assert set(FLAG_OF.values()) <= flags
    assert set(FLAG_OF) <= {f.name for f in dataclasses.fields(Config)}


def test_the_cli_names_the_flag(tiny_qwen3_gqa_dir):
    """The engine's kv_cache_memory= error, raised in the engine process, reaches the app's CLI as flags."""
    args = ["--model", str(tiny_qwen3_gqa_dir), "--device", "cpu", "--kv-cache-memory", "1"]
    proc = run_cli_on_terminal(*args)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "--kv-cache-memory 1 bytes holds no block" in lines[0] and "lower --block-size" in lines[0], lines[0]
    assert "kv_cache_memory=" not in lines[0]


def test_serve_names_the_flag(tiny_qwen3_gqa_dir):
    """`serve` translates the engine's argument names too: one line naming --kv-cache-memory, exit 2."""
    args = ["serve", "--model", str(tiny_qwen3_gqa_dir), "--device", "cpu", "--kv-cache-memory", "1", "--headless"]
    proc = subprocess.run(
        [sys.executable, "-m", "nanovllm_tui.app.cli", *args, "--port", "0"],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
    )
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr
    assert "--kv-cache-memory 1 bytes holds no block" in errors[0] and "kv_cache_memory=" not in errors[0], errors[0]
