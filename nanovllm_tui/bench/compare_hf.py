"""The same workload through transformers in this process: continuous batching (`init_continuous_batching`)
and, for contrast, padded static batches through `generate`.

Both sample like ours (temperature, no top-k/top-p) and never stop early (eos_token_id=-1 / none), so every
request produces exactly its max_tokens and the token counts match ours.
"""

from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from nanovllm_tui.bench.results import OfflineResult
from nanovllm_tui.bench.workload import BenchRequest, total_output_tokens, total_prompt_tokens


@dataclass(frozen=True, slots=True)
class HFSettings:
    """How to run transformers: the device/dtype our engine used, and our engine's limits for a fair fight."""

    device: str
    dtype: str  # torch dtype name, e.g. "bfloat16"
    temperature: float
    max_num_seqs: int
    max_num_batched_tokens: int
    kv_cache_tokens: int | None  # CPU: size transformers' cache like ours (on GPU it sizes itself from free memory)
    page_size: int = 256
    warmup: bool = True
    progress: bool = True


def load_model(model_dir: str, s: HFSettings, attn: str = "sdpa"):
    import torch
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=getattr(torch, s.dtype), attn_implementation=attn
    )
    return model.to(s.device).eval()


def _generation_config(s: HFSettings, max_new_tokens: int):
    from transformers import GenerationConfig

    return GenerationConfig(
        do_sample=s.temperature > 0,
        temperature=s.temperature or None,
        top_k=0,
        top_p=1.0,
        eos_token_id=-1,
        max_new_tokens=max_new_tokens,
    )


def run_transformers_cb(model_dir: str, workload: list[BenchRequest], s: HFSettings) -> OfflineResult:
    """transformers continuous batching (paged cache; flash attention if installed, else SDPA)."""
    model = load_model(model_dir, s)
    cb = _cb_config(s, sum(r.prompt_len + r.max_tokens for r in workload))
    hints = _workload_hints(workload)
    manager = model.init_continuous_batching(
        generation_config=_generation_config(s, max(r.max_tokens for r in workload)),
        continuous_batching_config=cb,
        **({"workload_hints": hints} if hints is not None else {}),
    )
    attn = model.config._attn_implementation  # after init: CB switches to flash attention when it is installed
    try:
        if s.device != "cpu" and hasattr(manager, "warmup"):
            manager.warmup()  # CUDA graph capture, as its generate_batch does before timing
        manager.start()
        if s.warmup:
            _cb_collect(
                manager,
                [manager.add_request(list(workload[0].prompt_token_ids[:16]), max_new_tokens=8, eos_token_id=-1)],
                None,
            )
        expected = total_output_tokens(workload)
        bar = tqdm(total=expected, desc="transformers-cb", unit="tok", disable=not s.progress, dynamic_ncols=True)
        start = time.perf_counter()
        ids = [
            manager.add_request(list(r.prompt_token_ids), max_new_tokens=r.max_tokens, eos_token_id=-1)
            for r in workload
        ]
        results = _cb_collect(manager, ids, bar)
        seconds = time.perf_counter() - start
        bar.close()
    finally:
        manager.stop(block=True, timeout=30)
        if hasattr(manager, "destroy"):
            manager.destroy()
    lost = "no result: transformers' generation thread stopped (its log above says why)"
    errors = [r.error for r in results.values() if r.error is not None] + [lost] * (len(ids) - len(results))
    out = OfflineResult(
        engine="transformers-cb",
        num_requests=len(workload),
        prompt_tokens=total_prompt_tokens(workload),
        output_tokens=sum(len(r.generated_tokens) for r in results.values()),
        expected_output_tokens=expected,
        seconds=seconds,
        num_errors=len(errors),
        extra={
            "attn_implementation": attn,
            "first_error": errors[0] if errors else None,
            "page_size": s.page_size,
            "num_blocks": cb.num_blocks,
            "max_batch_tokens": cb.max_batch_tokens,
        },
    )
    del model, manager
    free_memory()
    return out


def _cb_config(s: HFSettings, workload_tokens: int):
    """ContinuousBatchingConfig with our engine's limits (page size, batch token budget, max requests per batch).
    Releases up to 5.17 name the page size `block_size`. On CPU its cache holds as many tokens as ours; on GPU it
    sizes itself from free memory (90 %), as ours does with --gpu-memory-utilization 0.9."""
    import dataclasses

    from transformers import ContinuousBatchingConfig

    names = {f.name for f in dataclasses.fields(ContinuousBatchingConfig)}
    page = "page_size" if "page_size" in names else "block_size"
    num_blocks = None
    if s.device == "cpu" and s.kv_cache_tokens:  # no more than the workload can use: its masks grow with the cache
        num_blocks = math.ceil(min(s.kv_cache_tokens, workload_tokens) / s.page_size)
    options: dict[str, Any] = {
        page: s.page_size,
        "num_blocks": num_blocks,
        "max_batch_tokens": s.max_num_batched_tokens,
        "max_requests_per_batch": s.max_num_seqs,
    }
    return ContinuousBatchingConfig(**options)


def _workload_hints(workload: list[BenchRequest]):
    """WorkloadHints (transformers >= 5.1x) so it sizes its batches for this workload; None if it has none."""
    try:
        from transformers.generation.continuous_batching.utils import WorkloadHints
    except ImportError:
        return None
    return WorkloadHints(
        max_prompt_length=max(r.prompt_len for r in workload),
        max_generated_length=max(r.max_tokens for r in workload),
        num_requests=len(workload),
    )


def _cb_collect(manager, ids: list[str], bar) -> dict:
    """Wait for every request id's final output (a dead generation thread ends the wait)."""
    want = set(ids)
    results: dict[str, Any] = {}
    while want - results.keys():
        r = manager.get_result(timeout=1)
        if r is None:
            if not manager.is_running():
                break
            continue
        if r.is_finished() and r.request_id in want:
            results[r.request_id] = r
            if bar is not None:
                bar.update(len(r.generated_tokens))
    return results


def _generate_padded(model: Any, batch: list[BenchRequest], s: HFSettings) -> int:
    """One left-padded batch through model.generate to its longest max_tokens; tokens generated, padding included."""
    import torch

    device = torch.device(s.device)
    width = max(r.prompt_len for r in batch)
    ids = torch.zeros(len(batch), width, dtype=torch.long)
    mask = torch.zeros(len(batch), width, dtype=torch.long)
    for i, r in enumerate(batch):
        ids[i, width - r.prompt_len :] = torch.tensor(r.prompt_token_ids)
        mask[i, width - r.prompt_len :] = 1
    config = _generation_config(s, max(r.max_tokens for r in batch))
    config.eos_token_id, config.pad_token_id = None, 0
    with torch.inference_mode():
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
    return (out.shape[1] - width) * len(batch)


def run_transformers_static(
    model_dir: str, workload: list[BenchRequest], s: HFSettings, batch_size: int
) -> OfflineResult:
    """Padded static batching: requests in order, `batch_size` at a time, left-padded; each batch runs to its
    longest max_tokens. Only each request's own max_tokens count as output (the rest is the cost of padding)."""
    import torch

    model = load_model(model_dir, s)
    device = torch.device(s.device)

    if s.warmup:
        _generate_padded(model, [BenchRequest(workload[0].prompt_token_ids[:16], 8)], s)
    expected = total_output_tokens(workload)
    bar = tqdm(total=expected, desc="transformers-static", unit="tok", disable=not s.progress, dynamic_ncols=True)
    generated = 0
    start = time.perf_counter()
    for i in range(0, len(workload), batch_size):
        batch = workload[i : i + batch_size]
        generated += _generate_padded(model, batch, s)
        bar.update(sum(r.max_tokens for r in batch))
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    bar.close()
    del model
    free_memory()
    return OfflineResult(
        engine="transformers-static",
        num_requests=len(workload),
        prompt_tokens=total_prompt_tokens(workload),
        output_tokens=expected,
        expected_output_tokens=expected,
        seconds=seconds,
        extra={"attn_implementation": "sdpa", "batch_size": batch_size, "generated_including_padding": generated},
    )


def free_memory() -> None:
    """Collect dropped models and hand cached GPU memory back, so the next engine sizes its cache on a clean GPU."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
