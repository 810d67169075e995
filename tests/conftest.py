"""Shared pytest fixtures."""

import pathlib

import pytest


def pytest_addoption(parser):
    parser.addoption(
        "--long",
        action="store_true",
        default=False,
        help="run the long fuzzing profile (tests/test_fuzz_scheduler.py; same as NANOVLLM_FUZZ=long)",
    )


@pytest.fixture(scope="session")
def demo_model_dir() -> pathlib.Path:
    """SmolLM2-135M-Instruct as a float32 HF dir (downloads and converts on first use, ~40 s)."""
    from nanovllm_tui.engine.demo_model import ensure_demo_model

    return ensure_demo_model()


TINY_CONFIGS = {
    # No GQA, tied embeddings.
    "qwen3-tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=16,
        tie_word_embeddings=True,
    ),
    # GQA (2 q heads per kv head), untied LM head.
    "qwen3-tiny-gqa": dict(
        hidden_size=96,
        intermediate_size=192,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        tie_word_embeddings=False,
    ),
}


def make_tiny_qwen3(path: pathlib.Path, tokenizer_dir: pathlib.Path, seed: int = 0, **overrides) -> pathlib.Path:
    """A random-weight Qwen3 in the real HF format (config.json + safetensors + the demo model's tokenizer)."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    params = dict(
        vocab_size=len(tok),
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        initializer_range=0.3,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    params.update(overrides)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(Qwen3Config(**params)).to(torch.float32)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session", params=sorted(TINY_CONFIGS))
def tiny_qwen3_dir(request, tmp_path_factory, demo_model_dir) -> pathlib.Path:
    path = tmp_path_factory.mktemp(request.param)
    return make_tiny_qwen3(path, demo_model_dir, **TINY_CONFIGS[request.param])


@pytest.fixture(scope="session")
def tiny_qwen3_gqa_dir(tmp_path_factory, demo_model_dir) -> pathlib.Path:
    path = tmp_path_factory.mktemp("qwen3-tiny-gqa-single")
    return make_tiny_qwen3(path, demo_model_dir, **TINY_CONFIGS["qwen3-tiny-gqa"])
