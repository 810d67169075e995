"""The model a benchmark runs: a checkpoint dir (--model), or random weights of an architecture (--config JSON).

Throughput with ignore_eos does not depend on weight values, so `--config` builds the architecture with
transformers' random init, saves it as a normal HF dir (safetensors) under the cache, and reuses it after.
The engine loads a tokenizer from the model dir; the benchmark sends token ids, so a generated dir gets a
minimal word-level tokenizer whose vocabulary covers every id of the config (`<0>`, `<1>`, ...).
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import tempfile

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


def save_random_model(
    cfg: dict, path: str | os.PathLike, seed: int = 0, device: str | None = None, dtype: str | None = None
) -> None:
    """transformers' random init of the architecture in cfg, saved as an HF dir (config.json + safetensors).

    The init runs in fp32 (on the GPU when there is one: much faster) and is then cast to `dtype` (default:
    the config's), so one seed gives the same weights whatever dtype they are saved in.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(cfg)
    hf_config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    name = str(dtype or cfg.get("dtype") or cfg.get("torch_dtype") or "bfloat16").removeprefix("torch.")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
    model.to(getattr(torch, name, torch.bfloat16)).save_pretrained(path, safe_serialization=True)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def save_minimal_tokenizer(cfg: dict, path: str | os.PathLike) -> None:
    """A word-level tokenizer with one token per id: every id the model can emit decodes (to `<id>`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab_size = cfg.get("vocab_size") or cfg.get("text_config", {}).get("vocab_size")
    vocab = {f"<{i}>": i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<0>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.Fuse()
    eos = cfg.get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) else eos
    special = {"eos_token": f"<{eos}>"} if isinstance(eos, int) and 0 <= eos < vocab_size else {}
    PreTrainedTokenizerFast(tokenizer_object=tok, **special).save_pretrained(path)


def resolve_model(model: str | None, config: str | None, cache_dir: str | None = None) -> pathlib.Path:
    """--model DIR as given, or the random-weight dir for --config JSON; exactly one of them."""
    if (model is None) == (config is None):
        raise ValueError("pass exactly one of --model DIR (a checkpoint) or --config JSON (random weights)")
    if model is not None:
        path = pathlib.Path(model).expanduser()
        if not (path / "config.json").is_file():
            raise ValueError(f"--model {model!r} has no config.json; point it at a Hugging Face model directory")
        return path
    return random_model_dir(config, cache_dir)
