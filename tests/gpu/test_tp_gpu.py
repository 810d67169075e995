"""Tensor parallelism over NCCL: TP=2 and TP=4 give TP=1's greedy tokens in fp32 on a Qwen3-0.6B-architecture model."""

from __future__ import annotations

import gc
import os
import pathlib
import sys

import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from nanovllm_tui.bench.random_model import make_random_model  # noqa: E402
from nanovllm_tui.engine import LLM, SamplingParams  # noqa: E402

os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # NVLink multicast off (inherited by the spawned workers)
KW = dict(dtype="float32", kvcache_block_size=16, max_model_len=1024, num_kvcache_blocks=512)
PROMPTS = [list(range(100, 180)), [7, 8, 9, 10, 11], list(range(5000, 5300)), [42] * 33]
GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


@pytest.fixture(scope="module")
def qwen3_06b_dir(tmp_path_factory) -> pathlib.Path:
    return make_random_model(tmp_path_factory.mktemp("qwen3-0.6b-random"), device="cuda")


def _generate(model_dir: pathlib.Path, tp: int, enforce_eager: bool) -> list[list[int]]:
    llm = LLM(str(model_dir), tensor_parallel_size=tp, enforce_eager=enforce_eager, **KW)
    try:
        assert llm.stats().tensor_parallel_size == tp and len(llm.stats().rank_memory_bytes) == tp
        return [o["token_ids"] for o in llm.generate(PROMPTS, GREEDY, use_tqdm=False)]
    finally:
        llm.shutdown()
        del llm
        gc.collect()
        torch.cuda.empty_cache()


@pytest.fixture(scope="module")
def reference(qwen3_06b_dir) -> list[list[int]]:
    return _generate(qwen3_06b_dir, 1, enforce_eager=True)


@pytest.mark.parametrize("enforce_eager", [True, False], ids=["eager", "graphs"])
@pytest.mark.parametrize("tp", [2, 4])
def test_tp_matches_tp1_fp32(qwen3_06b_dir, reference, tp: int, enforce_eager: bool) -> None:
    if torch.cuda.device_count() < tp:
        pytest.skip(f"TP={tp} needs {tp} GPUs, {torch.cuda.device_count()} visible")
    assert _generate(qwen3_06b_dir, tp, enforce_eager) == reference


def test_more_ranks_than_gpus_is_a_clear_error(qwen3_06b_dir) -> None:
    n = torch.cuda.device_count() * 2
    if 16 % n:  # the error under test is the GPU count, so pick a size that divides the 16 heads
        pytest.skip(f"{torch.cuda.device_count()} GPUs: no head-dividing size above the GPU count")
    with pytest.raises(ValueError, match=rf"tensor_parallel_size={n} needs {n} GPUs"):
        LLM(str(qwen3_06b_dir), tensor_parallel_size=n, **KW)
