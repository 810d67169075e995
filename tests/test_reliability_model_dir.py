"""Issue 19/20, engine side: LLM(model) on a broken model directory fails at once with one line that says what
is wrong (not a regular file, permission denied, invalid config value) and speaks the API (`model`, not the
CLI's `--model`); a FIFO among the files never blocks; `~` is expanded; engine options of the wrong type are a
TypeError naming the option."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import threading

import pytest

from nanovllm_tui.engine import LLM, SamplingParams

OPTS = dict(device="cpu", kvcache_block_size=16, max_model_len=64, num_kvcache_blocks=8)
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _copy(src: pathlib.Path, dst: pathlib.Path, skip: tuple[str, ...] = ()) -> pathlib.Path:
    dst.mkdir()
    for f in src.iterdir():
        if f.is_file() and f.name not in skip:
            shutil.copy(f, dst / f.name)
    return dst


def _load_error(model, timeout: float = 120.0, **opts) -> BaseException:
    """The exception LLM(model) raises, from a thread so that a hang fails the test instead of blocking it."""
    box: dict[str, BaseException] = {}

    def build() -> None:
        try:
            LLM(model, **{**OPTS, **opts})
        except BaseException as exc:
            box["exc"] = exc

    t = threading.Thread(target=build, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"LLM({model!r}) still blocked after {timeout} s"
    assert "exc" in box, f"LLM({model!r}) loaded"
    return box["exc"]


CHILD = """
import json, sys
from nanovllm_tui.engine import LLM
try:
    LLM(sys.argv[1], **json.loads(sys.argv[2]))
    print(json.dumps(None))
except Exception as exc:
    print(json.dumps([type(exc).__name__, isinstance(exc, ValueError), str(exc)]))
"""


def _load_error_in_child(model: str, timeout: float = 120.0, prefix: tuple[str, ...] = ()) -> ValueError:
    """LLM(model)'s exception, raised in a child process: a blocked open() there (holding the GIL, as a native
    reader may) cannot hang the test run. `prefix` runs the child through another command (e.g. setpriv)."""
    try:
        proc = subprocess.run(
            [*prefix, sys.executable, "-c", CHILD, model, json.dumps(OPTS)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"LLM({model!r}) still blocked after {timeout} s")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result is not None, f"LLM({model!r}) loaded"
    name, is_value_error, message = result
    assert is_value_error, f"{name}: {message}"
    return ValueError(message)


def _one_line(exc: BaseException, *needles: str) -> str:
    msg = str(exc)
    assert isinstance(exc, ValueError) and "\n" not in msg, repr(msg)
    assert "--model" not in msg, msg  # the API's argument is `model`
    for needle in needles:
        assert needle in msg, msg
    return msg


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "tokenizer.json", "generation_config.json"])
def test_a_fifo_among_the_files_fails_at_once(tmp_path, tiny_qwen3_gqa_dir, name):
    model = _copy(tiny_qwen3_gqa_dir, tmp_path / "m", skip=(name,))
    fifo = model / name
    os.mkfifo(fifo)
    try:
        _one_line(_load_error_in_child(str(model)), name, "is a FIFO, not a regular file")
    finally:
        with contextlib.suppress(OSError):  # release a reader that might be blocked on it (before the fix)
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def test_a_directory_named_like_a_weights_file(tmp_path, tiny_qwen3_gqa_dir):
    model = _copy(tiny_qwen3_gqa_dir, tmp_path / "m")
    (model / "extra.safetensors").mkdir()
    _one_line(_load_error(str(model)), "extra.safetensors is a directory, not a regular file")


@pytest.mark.parametrize(
    "key, value",
    [("max_position_embeddings", -1), ("vocab_size", 0), ("intermediate_size", 0), ("rms_norm_eps", -1e-6)],
)
def test_invalid_config_values_are_named(tmp_path, tiny_qwen3_gqa_dir, key, value):
    model = _copy(tiny_qwen3_gqa_dir, tmp_path / "m")
    cfg = json.loads((model / "config.json").read_text())
    cfg[key] = value
    (model / "config.json").write_text(json.dumps(cfg))
    _one_line(_load_error(str(model)), f"invalid config value {key}={value!r}", "config.json")


def test_missing_or_misplaced_model_dirs_speak_the_api(tmp_path, tiny_qwen3_gqa_dir):
    _one_line(_load_error(str(tmp_path / "nope")), "does not exist", "model=")
    _one_line(_load_error(str(tiny_qwen3_gqa_dir / "config.json")), "is not a directory", "model=")
    model = _copy(tiny_qwen3_gqa_dir, tmp_path / "m", skip=("config.json",))
    _one_line(_load_error(str(model)), "has no config.json", "model=")


def test_a_missing_tokenizer_is_one_line(tmp_path, tiny_qwen3_gqa_dir):
    keep = ("config.json", "model.safetensors", "generation_config.json")
    model = _copy(
        tiny_qwen3_gqa_dir,
        tmp_path / "m",
        skip=tuple(f.name for f in tiny_qwen3_gqa_dir.iterdir() if f.name not in keep),
    )
    _one_line(_load_error(str(model)), "has no tokenizer")


# Root reads files whatever their permissions, unless it gives up the capabilities that let it: as root (CI
# runs as root), the loading child runs without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH, so permissions apply.
NO_DAC = ("--bounding-set", "-dac_override,-dac_read_search", "--inh-caps", "-dac_override,-dac_read_search")


@pytest.mark.skipif(AS_ROOT and shutil.which("setpriv") is None, reason="root without setpriv reads any file")
def test_unreadable_directory_and_weights_say_permission_denied(tmp_path, tiny_qwen3_gqa_dir):
    model = _copy(tiny_qwen3_gqa_dir, tmp_path / "m")

    def load_error(path: str) -> BaseException:
        if AS_ROOT:
            return _load_error_in_child(path, prefix=(str(shutil.which("setpriv")), *NO_DAC))
        return _load_error(path)

    weights = model / "model.safetensors"
    weights.chmod(0)
    try:
        _one_line(load_error(str(model)), "model.safetensors", "permission denied")
    finally:
        weights.chmod(0o644)
    model.chmod(0)
    try:
        _one_line(load_error(str(model)), "permission denied")
    finally:
        model.chmod(0o755)


def test_tilde_is_expanded(tmp_path, tiny_qwen3_gqa_dir, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "tiny").symlink_to(tiny_qwen3_gqa_dir)
    llm = LLM("~/models/tiny", **OPTS)
    assert llm.config.model == str(tmp_path / "models" / "tiny")
    out = llm.generate([[5, 6, 7]], SamplingParams(max_tokens=4), use_tqdm=False)[0]
    assert out["finish_reason"] in ("stop", "length")
    llm2 = LLM(tmp_path / "models" / "tiny", **OPTS)  # a PathLike works too
    assert llm2.config.model == llm.config.model


@pytest.mark.parametrize(
    "opts, needle",
    [
        (dict(max_num_seqs="4"), "max_num_seqs='4' must be an integer, got str"),
        (dict(max_model_len=True), "max_model_len=True must be an integer, got bool"),
        (dict(num_kvcache_blocks=8.0), "num_kvcache_blocks=8.0 must be an integer or None, got float"),
        (dict(enforce_eager=1), "enforce_eager=1 must be True or False"),
        (dict(gpu_memory_utilization="0.5"), "gpu_memory_utilization='0.5' must be a number"),
        (dict(device=0), "device=0 must be a string"),
    ],
)
def test_engine_options_of_the_wrong_type_are_named(tiny_qwen3_gqa_dir, opts, needle):
    with pytest.raises(TypeError, match=needle):
        LLM(str(tiny_qwen3_gqa_dir), **{**OPTS, **opts})


@pytest.mark.parametrize("model", [None, 5, ["a"]])
def test_model_of_the_wrong_type(model):
    with pytest.raises(TypeError, match="model must be a path to a model directory"):
        LLM(model)
