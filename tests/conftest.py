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


# What every tiny test model shares; large random weights (initializer_range 0.3) so layers move the argmax.
TINY_QWEN3_BASE = dict(
    model_type="qwen3",
    max_position_embeddings=2048,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    initializer_range=0.3,
)


def make_tiny_qwen3(path: pathlib.Path, tokenizer_dir: pathlib.Path, seed: int = 0, **overrides) -> pathlib.Path:
    """A random-weight fp32 Qwen3 in the real HF format with the demo model's tokenizer (bench/random_model.py)."""
    from nanovllm_tui.bench.random_model import make_random_model

    return make_random_model(path, TINY_QWEN3_BASE, seed=seed, tokenizer_dir=tokenizer_dir, **overrides)


@pytest.fixture(scope="session", params=sorted(TINY_CONFIGS))
def tiny_qwen3_dir(request, tmp_path_factory, demo_model_dir) -> pathlib.Path:
    path = tmp_path_factory.mktemp(request.param)
    return make_tiny_qwen3(path, demo_model_dir, **TINY_CONFIGS[request.param])


@pytest.fixture(scope="session")
def tiny_qwen3_gqa_dir(tmp_path_factory, demo_model_dir) -> pathlib.Path:
    path = tmp_path_factory.mktemp("qwen3-tiny-gqa-single")
    return make_tiny_qwen3(path, demo_model_dir, **TINY_CONFIGS["qwen3-tiny-gqa"])
