"""`nanovllm-tui bench`: parse flags, build the model and engine, run the workload (and transformers on it),
compute the floor, print tables, write --json / --trace. Imports no UI code: it runs on bare GPU boxes."""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import subprocess
import sys
import time
from typing import Any

from nanovllm_tui.bench import args as bench_args
from nanovllm_tui.bench import report
from nanovllm_tui.bench.results import OfflineResult
from nanovllm_tui.bench.workload import make_offline_workload, poisson_arrivals


def _environment(device) -> dict[str, Any]:
    import torch
    import transformers

    commit = os.environ.get("NANOVLLM_COMMIT")
    if not commit:
        try:
            # --dirty: a run from a working tree that differs from its commit says so (e.g. "75f4767-dirty").
            commit = (
                subprocess.run(
                    ["git", "describe", "--always", "--dirty", "--abbrev=12"],
                    capture_output=True,
                    text=True,
                    timeout=5,
                    cwd=os.path.dirname(os.path.abspath(__file__)),
                ).stdout.strip()
                or None
            )
        except (OSError, subprocess.SubprocessError):
            commit = None
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit,
        "host": platform.node(),
        "device": str(device),
        "gpu": gpu,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def _measure_rates(ns, device, dtype) -> dict[str, Any]:
    """Bandwidth and peak compute for the floor: given on the command line, else measured now (before the
    engine takes the GPU's memory)."""
    from nanovllm_tui.bench.floor import measure_copy_bandwidth, measure_matmul_tflops

    tp = ns.tensor_parallel_size  # each rank streams its own shard: the rates add up
    times_tp = f", x{tp} ranks" if tp > 1 else ""
    if ns.bandwidth is not None:
        bw, bw_src = ns.bandwidth, "given"
    else:
        bw, bw_src = measure_copy_bandwidth(device) * tp, "measured: device copy, read+write" + times_tp
    if ns.peak_tflops is not None:
        peak, peak_src = ns.peak_tflops, "given"
    else:
        dtype_name = str(dtype).removeprefix("torch.")
        peak, peak_src = measure_matmul_tflops(device, dtype) * tp, f"measured: {dtype_name} matmul" + times_tp
    return {"bandwidth_gbs": bw, "bandwidth_source": bw_src, "peak_tflops": peak, "peak_source": peak_src}


def run(ns) -> dict[str, Any]:
    """The whole benchmark; returns the JSON document (also printed as tables along the way)."""
    import torch

    from nanovllm_tui.bench.compare_hf import HFSettings, free_memory
    from nanovllm_tui.bench.floor import model_shape, workload_floor
    from nanovllm_tui.bench.model_source import resolve_model
    from nanovllm_tui.engine import LLM
    from nanovllm_tui.engine.devices import resolve_device, resolve_dtype
    from nanovllm_tui.engine.execution.loader import load_hf_config

    progress = not ns.no_progress
    # 1. Flags, the model and the workload, validated before anything is allocated.
    if ns.mode == "online" and ns.compare:
        raise ValueError("--compare runs the offline workload; drop it for online mode")
    if ns.mode == "offline" and len(ns.policy) > 1:
        raise ValueError("offline mode runs one --policy; pass a comma list only in online mode")
    if ns.max_concurrency is not None and ns.max_concurrency < 1:
        raise ValueError(f"--max-concurrency {ns.max_concurrency} must be >= 1")
    if ns.json_path:
        report.check_writable(ns.json_path, "--json")
    model_dir = str(resolve_model(ns.model, ns.config, ns.cache_dir))
    hf_config = load_hf_config(model_dir)
    if ns.max_token_id >= hf_config.vocab_size:
        raise ValueError(
            f"--max-token-id {ns.max_token_id} is outside the model's vocabulary "
            f"({hf_config.vocab_size}); pass --max-token-id {hf_config.vocab_size - 1} or less"
        )
    workload = make_offline_workload(ns.num_requests, ns.prompt_len, ns.output_len, ns.seed, ns.max_token_id)
    longest = max(r.prompt_len + r.max_tokens for r in workload)
    if longest > ns.max_model_len:
        raise ValueError(
            f"the workload's longest request needs {longest} tokens > --max-model-len "
            f"{ns.max_model_len}; raise --max-model-len or lower --prompt-len / --output-len"
        )
    if ns.cpu_threads is not None:
        torch.set_num_threads(max(1, ns.cpu_threads))
    device = resolve_device(ns.device)
    dtype = resolve_dtype(ns.dtype, device, hf_config)
    doc: dict[str, Any] = {
        "mode": ns.mode,
        "argv": ns.argv,
        "environment": _environment(device),
        "model": {
            "dir": model_dir,
            "config": ns.config,
            "architectures": getattr(hf_config, "architectures", None),
            "dtype": str(dtype).removeprefix("torch."),
        },
        "engine_options": bench_args.engine_kwargs(ns),
        "workload": {
            "num_requests": ns.num_requests,
            "prompt_len": list(ns.prompt_len),
            "output_len": list(ns.output_len),
            "max_token_id": ns.max_token_id,
            "seed": ns.seed,
            "temperature": ns.temperature,
            "ignore_eos": True,
            "warmup": not ns.no_warmup,
            "prompt_tokens": sum(r.prompt_len for r in workload),
            "output_tokens": sum(r.max_tokens for r in workload),
        },
    }
    rates = None if ns.no_floor or ns.mode == "online" else _measure_rates(ns, device, dtype)
    free_memory()

    # 2. Our engine.
    trace = report.TraceWriter(ns.trace) if ns.trace else None
    t0 = time.perf_counter()
    llm = LLM(model_dir, **bench_args.engine_kwargs(ns))
    runner = llm.model_runner
    doc["engine"] = {
        "init_seconds": time.perf_counter() - t0,
        "num_kvcache_blocks": runner.num_kvcache_blocks,
        "block_size": llm.config.kvcache_block_size,
        "max_model_len": llm.config.max_model_len,
        "max_num_batched_tokens": llm.config.max_num_batched_tokens,
        "mixed_prefill_tokens": llm.config.mixed_prefill_tokens,
        "attention_backend": getattr(getattr(getattr(runner, "runner", runner), "backend", None), "name", None),
    }
    try:
        if ns.mode == "offline":
            from nanovllm_tui.bench.offline import run_offline

            ours = run_offline(llm, workload, ns.temperature, warmup=not ns.no_warmup, progress=progress, on_step=trace)
            print(report.nano_vllm_line(ours))
        else:
            from nanovllm_tui.bench.online import run_online
            from nanovllm_tui.engine.serving.thread_service import EngineService

            arrivals = poisson_arrivals(len(workload), ns.request_rate, ns.seed)
            service = EngineService(llm)
            doc["online"] = {}
            try:
                for i, policy in enumerate(ns.policy):  # one engine; only the policy changes between runs
                    if i > 0:  # same prompts again: forget the last run's cached blocks so it can't hit them
                        # (the service has no public command for this; _command runs it on the idle engine thread)
                        service._command(llm.block_manager.reset_prefix_cache)
                    service.set_scheduling_policy(policy)
                    online, steps = run_online(
                        service,
                        workload,
                        arrivals,
                        ns.request_rate,
                        ns.temperature,
                        warmup=not ns.no_warmup and i == 0,
                        progress=progress,
                        max_concurrency=ns.max_concurrency,
                    )
                    if trace is not None:
                        for step in steps:
                            trace(step)
                    doc["online"][policy] = online.as_dict()
                    print(report.online_table(online))
            finally:
                service.shutdown()
    finally:
        if trace is not None:
            trace.close()
            doc["trace"] = {"path": ns.trace, "steps": trace.count}
        kv_tokens = runner.num_kvcache_blocks * llm.config.kvcache_block_size
        llm.shutdown()
        del llm, runner
        free_memory()
    if ns.mode == "online":
        return doc

    # 3. transformers on the same workload.
    results: list[OfflineResult] = [ours]
    settings = HFSettings(
        device=str(device),
        dtype=str(dtype).removeprefix("torch."),
        temperature=ns.temperature,
        max_num_seqs=ns.max_num_seqs,
        max_num_batched_tokens=ns.max_num_batched_tokens,
        kv_cache_tokens=kv_tokens,
        page_size=ns.block_size,
        warmup=not ns.no_warmup,
        progress=progress,
    )
    for name in dict.fromkeys(ns.compare):  # in order, each once
        from nanovllm_tui.bench.compare_hf import run_transformers_cb, run_transformers_static

        if name == "transformers":
            results.append(run_transformers_cb(model_dir, workload, settings))
        else:
            results.append(run_transformers_static(model_dir, workload, settings, ns.hf_batch_size))
    doc["offline"] = {r.engine: r.as_dict() for r in results}
    doc["ratios"] = {
        f"nanovllm-tui/{r.engine}": (ours.output_tok_s / r.output_tok_s if r.output_tok_s else None)
        for r in results[1:]
    }
    print(report.offline_table(results))

    # 4. The floor.
    if rates is not None:
        shape = model_shape(model_dir, dtype.itemsize)
        floor = workload_floor(shape, workload, rates["bandwidth_gbs"], rates["peak_tflops"], ns.max_num_seqs)
        doc["floor"] = {**rates, "model_shape": dataclasses.asdict(shape), **floor.as_dict(ours.seconds)}
        print(report.floor_table(floor, ours.seconds, rates["bandwidth_source"], rates["peak_source"]))
    return doc


def main(argv: list[str] | None = None) -> int:
    """Entry point of `nanovllm-tui bench` / `python -m nanovllm_tui.bench`; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    ns = bench_args.build_parser().parse_args(argv)
    ns.argv = argv
    try:
        doc = run(ns)
    except ValueError as exc:  # user-facing problems (bad flags, model dir, sizes): one line, no traceback
        print(f"nanovllm-tui bench: error: {exc}", file=sys.stderr)
        return 2
    if ns.json_path:
        report.write_json(ns.json_path, doc)
        print(f"results written to {ns.json_path}")
    failed = sum(r.get("num_errors", 0) for r in doc.get("offline", {}).values())
    failed += sum(r.get("num_errors", 0) for r in doc.get("online", {}).values())
    return 1 if failed else 0
