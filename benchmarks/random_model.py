"""A random-weight Hugging Face model dir from a config.json (default: Qwen3-0.6B's), for GPU tests and benchmarks."""
from __future__ import annotations

import json
import pathlib

QWEN3_06B_CONFIG = pathlib.Path(__file__).with_name("configs") / "qwen3-0.6b.json"


def make_random_model(out_dir: str | pathlib.Path, config_path: str | pathlib.Path = QWEN3_06B_CONFIG,
                      seed: int = 0, device: str = "cpu", save_dtype: str = "float32", **overrides) -> pathlib.Path:
    """Save config.json + fp32 safetensors with transformers' own random init, plus a word-level tokenizer.

    The tokenizer only exists because the engine loads one: callers pass token ids, not text.
    """
    import torch
    from tokenizers import Tokenizer, models
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = json.loads(pathlib.Path(config_path).read_text())
    cfg.update(overrides)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    config = AutoConfig.from_pretrained(out)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # bf16 halves what an 8B-sized model writes and reads (32 GB in fp32); fp32 keeps exact-match tests exact.
    model.to(getattr(torch, save_dtype)).save_pretrained(out, safe_serialization=True)
    vocab = {"<unk>": 0, "<eos>": 1}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
                                  unk_token="<unk>", eos_token="<eos>")
    tok.save_pretrained(out)
    return out
