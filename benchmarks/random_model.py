"""A random-weight Hugging Face model dir from a config.json (default: Qwen3-0.6B's), for GPU tests and benchmarks."""

from __future__ import annotations

import json
import pathlib

from nanovllm_tui.bench.model_source import save_minimal_tokenizer, save_random_model

QWEN3_06B_CONFIG = pathlib.Path(__file__).with_name("configs") / "qwen3-0.6b.json"


def make_random_model(
    out_dir: str | pathlib.Path,
    config_path: str | pathlib.Path = QWEN3_06B_CONFIG,
    seed: int = 0,
    device: str = "cpu",
    save_dtype: str = "float32",
    **overrides,
) -> pathlib.Path:
    """config_path's architecture with `overrides`, random weights saved in save_dtype, plus a word-level
    tokenizer (the engine loads one; callers pass token ids).

    fp32 by default keeps exact-match tests exact; bf16 halves what an 8B-sized model writes and reads.
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = json.loads(pathlib.Path(config_path).read_text())
    cfg.update(overrides)
    save_random_model(cfg, out, seed=seed, device=device, dtype=save_dtype)
    save_minimal_tokenizer(cfg, out)
    return out
