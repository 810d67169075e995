"""Offline throughput at tensor-parallel sizes 1/2/4 on nano-vllm's bench workload, random-weight Qwen3 models.

    NCCL_NVLS_ENABLE=0 python benchmarks/tp_bench.py [--models 0.6b,8b] [--tp 1,2,4] [--num-requests 256]

Workload: 256 requests, prompt lengths and max_tokens uniform in [100, 1024], token ids uniform in
[0, 10000], seed 0, ignore_eos (nanovllm_tui.bench.workload). Models: Qwen3-0.6B's config and an
8B-shaped Qwen3 (Qwen3-8B's sizes), random weights, run in the config's bf16. Each (model, TP) cell runs
in a fresh subprocess so GPU memory starts clean; sizes needing more GPUs than visible are skipped.
Prints a markdown table for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

QWEN3_8B = dict(
    hidden_size=4096,
    intermediate_size=12288,
    num_hidden_layers=36,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    tie_word_embeddings=False,
    max_position_embeddings=40960,
)
MODELS: dict[str, dict[str, Any]] = {"0.6b": {}, "8b": QWEN3_8B}


def run_cell(model_dir: str, tp: int, num_requests: int) -> dict:
    """Child side: one engine, a warm-up request, then the whole workload; throughput in output tokens/s."""
    from nanovllm_tui.bench.workload import make_offline_workload
    from nanovllm_tui.engine import LLM, SamplingParams

    work = make_offline_workload(num_requests=num_requests)
    llm = LLM(model_dir, tensor_parallel_size=tp, max_model_len=4096)
    try:
        llm.generate([[1, 2, 3]], SamplingParams(max_tokens=8), use_tqdm=False)
        prompts = [list(r.prompt_token_ids) for r in work]
        sps = [SamplingParams(temperature=0.6, max_tokens=r.max_tokens, ignore_eos=True) for r in work]
        start = time.perf_counter()
        llm.generate(prompts, sps, use_tqdm=False)
        seconds = time.perf_counter() - start
        stats = llm.stats()
    finally:
        llm.shutdown()
    tokens = sum(r.max_tokens for r in work)
    return dict(
        tp=tp,
        seconds=seconds,
        output_tokens=tokens,
        tok_s=tokens / seconds,
        kv_blocks=stats.num_blocks_total,
        preemptions=stats.num_preemptions,
        rank_memory_gib=[round(b / 2**30, 2) for b in stats.rank_memory_bytes],
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="0.6b,8b")
    ap.add_argument("--tp", default="1,2,4")
    ap.add_argument("--num-requests", type=int, default=256)
    ap.add_argument("--model-cache", default=os.path.join(tempfile.gettempdir(), "nanovllm-tp-bench"))
    ap.add_argument("--cell", nargs=2, metavar=("MODEL_DIR", "TP"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cell:
        print("RESULT " + json.dumps(run_cell(args.cell[0], int(args.cell[1]), args.num_requests)), flush=True)
        return
    import torch

    from nanovllm_tui.bench.random_model import make_random_model

    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    gpus = torch.cuda.device_count()
    sizes = [int(t) for t in args.tp.split(",")]
    rows = []
    for name in args.models.split(","):
        model_dir = pathlib.Path(args.model_cache) / f"qwen3-{name}"
        if not (model_dir / "config.json").exists():
            print(f"building random-weight qwen3-{name} in {model_dir} ...", flush=True)
            make_random_model(model_dir, device="cuda" if gpus else "cpu", dtype="bfloat16", **MODELS[name])
        for tp in sizes:
            if tp > max(gpus, 1):
                print(f"skip qwen3-{name} TP={tp}: {gpus} GPU(s) visible", flush=True)
                continue
            out = subprocess.run(
                [sys.executable, __file__, "--cell", str(model_dir), str(tp), "--num-requests", str(args.num_requests)],
                cwd=REPO,
                capture_output=True,
                text=True,
            )
            line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                print(f"qwen3-{name} TP={tp} failed:\n{out.stderr[-3000:]}", flush=True)
                continue
            cell = json.loads(line[7:])
            rows.append((name, cell))
            print(f"qwen3-{name} TP={tp}: {cell['tok_s']:.0f} tok/s", flush=True)
    device = torch.cuda.get_device_name(0) if gpus else "CPU"
    print(f"\n{args.num_requests} requests, nano-vllm offline workload, bf16, {device} x{gpus}")
    print("| model | TP | output tok/s | time (s) | KV blocks | preemptions | memory per rank (GiB) |")
    print("|---|---|---|---|---|---|---|")
    for name, c in rows:
        print(
            f"| qwen3-{name} | {c['tp']} | {c['tok_s']:.0f} | {c['seconds']:.1f} | {c['kv_blocks']} | "
            f"{c['preemptions']} | {', '.join(map(str, c['rank_memory_gib']))} |"
        )


if __name__ == "__main__":
    main()
