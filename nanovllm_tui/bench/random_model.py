"""Random-weight Hugging Face checkpoints (Qwen3 / Llama) for tests, tensor-parallel checks and benchmarks: the
real format (config.json + safetensors + a tokenizer), transformers' random init, any size.

Throughput with ignore_eos and token-for-token comparisons with transformers do not depend on weight values,
so these dirs stand in for downloaded models. The tokenizer is a given model's (e.g. the demo model's, for
tests that send text) or a minimal word-level one whose vocabulary covers every id (`<0>`, `<1>`, ...).
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

# Qwen3-0.6B's architecture (its config.json, as benchmarks/configs/qwen3-0.6b.json).
QWEN3_06B: dict[str, Any] = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 1024,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "max_position_embeddings": 40960,
    "max_window_layers": 28,
    "num_attention_heads": 16,
    "num_hidden_layers": 28,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000,
    "sliding_window": None,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}


def save_random_model(
    cfg: Mapping[str, Any],
    path: str | os.PathLike,
    seed: int = 0,
    device: str | None = None,
    dtype: str | None = None,
) -> None:
    """transformers' random init of the architecture in cfg (with "model_type"), saved as an HF dir.

    The init runs in fp32 (on the GPU when there is one and `device` is not given: much faster) and is then
    cast to `dtype` (default: the config's), so one seed gives the same weights whatever dtype they are saved in.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    params = dict(cfg)
    hf_config = AutoConfig.for_model(params.pop("model_type"), **params)
    name = str(dtype or params.get("dtype") or params.get("torch_dtype") or "bfloat16").removeprefix("torch.")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
    model.to(getattr(torch, name, torch.bfloat16)).save_pretrained(path, safe_serialization=True)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def save_minimal_tokenizer(cfg: Mapping[str, Any], path: str | os.PathLike) -> None:
    """A word-level tokenizer with one token per id: every id the model can emit decodes (to `<id>`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab_size = cfg.get("vocab_size") or cfg.get("text_config", {}).get("vocab_size")
    if not isinstance(vocab_size, int):
        raise ValueError("the config has no vocab_size; add one (e.g. 151936 for Qwen3)")
    vocab = {f"<{i}>": i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<0>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.Fuse()
    eos = cfg.get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) else eos
    special = {"eos_token": f"<{eos}>"} if isinstance(eos, int) and 0 <= eos < vocab_size else {}
    PreTrainedTokenizerFast(tokenizer_object=tok, **special).save_pretrained(path)


def make_random_model(
    out_dir: str | os.PathLike,
    config: Mapping[str, Any] | str | os.PathLike = QWEN3_06B,
    *,
    seed: int = 0,
    device: str = "cpu",
    dtype: str = "float32",
    tokenizer_dir: str | os.PathLike | None = None,
    **overrides: Any,
) -> pathlib.Path:
    """`config` (a dict or a config.json path) with `overrides`, random weights saved in `dtype`, and a tokenizer.

    With tokenizer_dir the model gets that tokenizer, and its vocabulary size and bos/eos ids (before
    `overrides`); otherwise a minimal word-level tokenizer (callers then send token ids).
    fp32 by default keeps exact-match tests exact; bf16 halves what a large model writes and reads.
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(config, Mapping):
        cfg = dict(config)
    else:
        cfg = json.loads(pathlib.Path(config).read_text())
    tok = None
    if tokenizer_dir is not None:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tokenizer_dir)
        cfg.update(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    cfg.update(overrides)
    save_random_model(cfg, out, seed=seed, device=device, dtype=dtype)
    if tok is not None:
        tok.save_pretrained(out)
    else:
        save_minimal_tokenizer(cfg, out)
    return out
