"""The hardware floor of a workload: bytes it must move and FLOPs it must do, over bandwidth and peak compute.

Definitions (a lower bound: everything not listed, e.g. activations and prefill reads, is left out):
- A request with a prompt of p tokens and o generated tokens makes its first token in the prefill, then o - 1
  decode forwards; the k-th generated token (k >= 2) attends over p + k - 1 tokens, so its decode reads the K and V
  of that many tokens: (o - 1) * p + o * (o - 1) / 2 token-reads of KV per request.
- Every decode step reads every weight once (all but the input embedding; the LM head is read, tied or not).
  The fewest decode steps any scheduler can take is max(max(o) - 1, ceil(sum(o - 1) / max_num_seqs)).
- Compute: 2 FLOPs per weight per token through the network (p + o - 1 tokens per request), the LM head only on
  the o sampled rows, plus attention's QK^T and PV: 4 * layers * q_heads * head_dim per (query, key) pair, causal.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from nanovllm_tui.bench.workload import BenchRequest


@dataclass(frozen=True, slots=True)
class ModelShape:
    """What the floor needs to know about a model."""

    non_embedding_params: int  # every parameter except the input embedding and the LM head
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    dtype_bytes: int

    @property
    def lm_head_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def weight_bytes_per_step(self) -> int:
        return (self.non_embedding_params + self.lm_head_params) * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes


@dataclass(frozen=True, slots=True)
class Floor:
    """Bytes, FLOPs and the times they take at the given rates; `*_fraction` of a measured time."""

    decode_steps: int
    weight_bytes: int
    kv_bytes: int
    flops: int
    bandwidth_gbs: float
    peak_tflops: float
    output_tokens: int

    @property
    def bytes_total(self) -> int:
        return self.weight_bytes + self.kv_bytes

    @property
    def memory_seconds(self) -> float:
        return self.bytes_total / (self.bandwidth_gbs * 1e9)

    @property
    def compute_seconds(self) -> float:
        return self.flops / (self.peak_tflops * 1e12)

    @property
    def memory_tok_s(self) -> float:
        return self.output_tokens / self.memory_seconds

    @property
    def compute_tok_s(self) -> float:
        return self.output_tokens / self.compute_seconds

    def as_dict(self, measured_seconds: float | None = None) -> dict:
        d = asdict(self)
        d.update(
            bytes_total=self.bytes_total,
            memory_seconds=self.memory_seconds,
            compute_seconds=self.compute_seconds,
            memory_floor_tok_s=self.memory_tok_s,
            compute_floor_tok_s=self.compute_tok_s,
        )
        if measured_seconds:
            d.update(
                memory_fraction=self.memory_seconds / measured_seconds,
                compute_fraction=self.compute_seconds / measured_seconds,
            )
        return d


def min_decode_steps(output_lens: Sequence[int], max_num_seqs: int) -> int:
    """The fewest decode forwards that can produce these outputs with at most max_num_seqs per step."""
    decodes = [max(o - 1, 0) for o in output_lens]
    if not decodes:
        return 0
    return max(*decodes, math.ceil(sum(decodes) / max_num_seqs))


def kv_token_reads(prompt_len: int, output_len: int) -> int:
    """Tokens of KV read by the decode forwards of one request: sum over k = 2..o of (p + k - 1)."""
    o = output_len
    return (o - 1) * prompt_len + o * (o - 1) // 2 if o > 0 else 0


def attention_pairs(prompt_len: int, output_len: int) -> int:
    """(query, key) pairs over the p + o - 1 tokens that go through the network, causal: n (n + 1) / 2."""
    n = prompt_len + output_len - 1
    return n * (n + 1) // 2


def workload_floor(
    shape: ModelShape, workload: Sequence[BenchRequest], bandwidth_gbs: float, peak_tflops: float, max_num_seqs: int
) -> Floor:
    """Bytes and FLOPs the workload needs on this model (see the module docstring for what is counted)."""
    if bandwidth_gbs <= 0 or peak_tflops <= 0:
        raise ValueError(f"bandwidth ({bandwidth_gbs} GB/s) and peak compute ({peak_tflops} TFLOPS) must be > 0")
    outs = [r.max_tokens for r in workload]
    steps = min_decode_steps(outs, max_num_seqs)
    kv_reads = sum(kv_token_reads(r.prompt_len, r.max_tokens) for r in workload)
    tokens = sum(r.prompt_len + r.max_tokens - 1 for r in workload)
    pairs = sum(attention_pairs(r.prompt_len, r.max_tokens) for r in workload)
    flops = (
        2 * shape.non_embedding_params * tokens
        + 2 * shape.lm_head_params * sum(outs)
        + 4 * shape.num_layers * shape.num_heads * shape.head_dim * pairs
    )
    return Floor(
        decode_steps=steps,
        weight_bytes=steps * shape.weight_bytes_per_step,
        kv_bytes=kv_reads * shape.kv_bytes_per_token,
        flops=flops,
        bandwidth_gbs=bandwidth_gbs,
        peak_tflops=peak_tflops,
        output_tokens=sum(outs),
    )


# -- the model's shape, from its files --------------------------------------------------------------


def model_shape(model_dir: str, dtype_bytes: int) -> ModelShape:
    """Parameter counts from the safetensors headers (exact, no weights loaded), the rest from config.json."""
    from safetensors import safe_open

    from nanovllm_tui.engine.execution.loader import weight_files

    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    cfg = cfg.get("text_config", cfg)
    total = embed = head = 0
    for path in weight_files(model_dir):
        with safe_open(path, "pt", "cpu") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if "rotary_emb" in name:
                    continue
                numel = math.prod(f.get_slice(name).get_shape())
                total += numel
                if name.endswith("embed_tokens.weight"):
                    embed += numel
                elif name.endswith("lm_head.weight"):
                    head += numel
    heads = cfg["num_attention_heads"]
    return ModelShape(
        non_embedding_params=total - embed - head,
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["hidden_size"],
        num_layers=cfg["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=cfg.get("num_key_value_heads") or heads,
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
        dtype_bytes=dtype_bytes,
    )


# -- measured rates ---------------------------------------------------------------------------------


def _time_median(fn, device, iters: int) -> float:
    """Median seconds of fn() over iters runs after two warm-ups."""
    import torch

    fn(), fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def measure_copy_bandwidth(device, nbytes: int | None = None, iters: int = 10) -> float:
    """GB/s of a large device-to-device copy, counting bytes read plus bytes written."""
    import torch

    device = torch.device(device)
    nbytes = nbytes or ((1 << 30) if device.type == "cuda" else (256 << 20))
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    src.fill_(1)
    dst = torch.empty_like(src)
    seconds = _time_median(lambda: dst.copy_(src), device, iters)
    return 2 * nbytes / seconds / 1e9


def measure_matmul_tflops(device, dtype, n: int | None = None, iters: int = 10) -> float:
    """TFLOPS of an n x n x n matmul in the engine's dtype (2 n^3 FLOPs)."""
    import torch

    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = _time_median(lambda: a @ b, device, iters)
    return 2 * n**3 / seconds / 1e12


def measure_rates(
    device: Any, dtype: Any, tp: int, bandwidth: float | None, peak_tflops: float | None
) -> dict[str, Any]:
    """Bandwidth and peak compute for the floor: given on the command line, else measured now (before the
    engine takes the GPU's memory)."""
    # Each rank streams its own shard: the rates add up.
    times_tp = f", x{tp} ranks" if tp > 1 else ""
    if bandwidth is not None:
        bw, bw_src = bandwidth, "given"
    else:
        bw, bw_src = measure_copy_bandwidth(device) * tp, "measured: device copy, read+write" + times_tp
    if peak_tflops is not None:
        peak, peak_src = peak_tflops, "given"
    else:
        dtype_name = str(dtype).removeprefix("torch.")
        peak, peak_src = measure_matmul_tflops(device, dtype) * tp, f"measured: {dtype_name} matmul" + times_tp
    return {"bandwidth_gbs": bw, "bandwidth_source": bw_src, "peak_tflops": peak, "peak_source": peak_src}
