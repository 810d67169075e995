"""The model a benchmark runs: a checkpoint dir (--model), random weights of an architecture (--config JSON),
or, given neither, the app's demo model.

Throughput with ignore_eos does not depend on weight values, so `--config` builds the architecture with
transformers' random init (bench/random_model.py), saves it as a normal HF dir under the cache, and reuses it
after. The benchmark sends token ids, so a generated dir gets a minimal word-level tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable

from nanovllm_tui.bench.random_model import save_minimal_tokenizer, save_random_model

_MARKER = ".complete"


def default_cache_dir() -> pathlib.Path:
    """$NANOVLLM_TUI_CACHE/bench-models (default ~/.cache/nanovllm-tui/bench-models)."""
    root = os.environ.get("NANOVLLM_TUI_CACHE") or pathlib.Path.home() / ".cache" / "nanovllm-tui"
    return pathlib.Path(root) / "bench-models"


def read_config_json(path: str) -> dict:
    """Load an HF config.json-style file, with errors that say what to fix."""
    try:
        with open(path) as f:
            cfg = json.load(f)
    except OSError as exc:
        raise ValueError(f"cannot read --config {path!r} ({exc.strerror}); pass a config.json file") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"--config {path!r} is not valid JSON ({exc})") from exc
    if not isinstance(cfg, dict) or "model_type" not in cfg:
        raise ValueError(f'--config {path!r} has no "model_type"; use a Hugging Face config.json (e.g. qwen3, llama)')
    return cfg


def random_model_dir(config_path: str, cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """An HF model dir with random weights of the architecture in config_path; built once per distinct config."""
    cfg = read_config_json(config_path)
    key = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]
    cache = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache / f"{cfg['model_type']}-random-{key}"
    if (target / _MARKER).is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    work = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=cache))
    try:
        save_random_model(cfg, work)
        save_minimal_tokenizer(cfg, work)
        (work / _MARKER).touch()
        try:
            work.rename(target)
        except OSError:  # another process built it first; theirs is as good as ours
            if not (target / _MARKER).is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def resolve_model(
    model: str | None,
    config: str | None,
    cache_dir: str | None = None,
    progress: Callable[[str, int, int, str], None] | None = None,
) -> pathlib.Path:
    """--model DIR checked cheaply, the random-weight dir for --config JSON, or (neither) the demo model
    (its preparation's phases to progress, see bench/phases.py)."""
    from nanovllm_tui.app.model_args import check_model_dir

    if model is not None and config is not None:
        raise ValueError("pass one of --model DIR (a checkpoint) or --config JSON (random weights), not both")
    if config is not None:
        return random_model_dir(config, cache_dir)
    if model is not None:
        path = pathlib.Path(model).expanduser()
        check_model_dir(str(path))
        return path
    from nanovllm_tui.engine.demo_model import DemoModelError, ensure_demo_model

    try:
        return ensure_demo_model(progress=progress)
    except DemoModelError as exc:
        raise ValueError(str(exc)) from None
