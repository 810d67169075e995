"""`nanovllm-tui bench`: parse flags, build the model and engine, run the workload (and transformers on it),
compute the floor, print tables, write --json / --trace. Imports no UI code: it runs on bare GPU boxes.

Tables go to stdout; the phases before the timed run (demo model, engine load, CUDA graphs, warm-up) and the
progress bars go to stderr (bench/phases.py), live only on a terminal and without --no-progress."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from typing import TYPE_CHECKING, Any

from nanovllm_tui.app.engine_args import cli_message, torch_threads
from nanovllm_tui.bench import args as bench_args
from nanovllm_tui.bench import report
from nanovllm_tui.bench.phases import PhasePrinter
from nanovllm_tui.bench.results import OfflineResult
from nanovllm_tui.bench.workload import BenchRequest, make_offline_workload, poisson_arrivals

if TYPE_CHECKING:
    from nanovllm_tui.engine.serving.protocol import EngineInfo


def _prepare(ns: argparse.Namespace) -> tuple[str, Any, list[BenchRequest]]:
    """The flags, the model and the workload, validated before anything is allocated."""
    from nanovllm_tui.bench.model_source import resolve_model
    from nanovllm_tui.engine.execution.loader import load_hf_config

    if ns.url is not None:
        raise ValueError(f"--url is for bench serve (a server's benchmark); drop it for {ns.mode} mode")
    if ns.mode == "online" and ns.compare:
        raise ValueError("--compare runs the offline workload; drop it for online mode")
    if ns.mode == "offline" and len(ns.policy) > 1:
        raise ValueError("offline mode runs one --policy; pass a comma list only in online mode")
    if ns.json_path:
        report.check_writable(ns.json_path, "--json")
    with _printer(ns, prefix="demo model ") as demo:  # a failed phase leaves no live line behind
        model_dir = str(resolve_model(ns.model, ns.config, ns.cache_dir, demo))
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
    return model_dir, hf_config, workload


def _printer(ns: argparse.Namespace, prefix: str = "") -> PhasePrinter:
    """Where the phases before the timed run are told: stderr, live unless --no-progress."""
    return PhasePrinter("stderr", prefix=prefix, live=not ns.no_progress)


def _document(ns: argparse.Namespace, model_dir: str, hf_config: Any, workload: list[BenchRequest], device, dtype):
    """The --json document's description of the run (results are added as they come)."""
    return {
        "mode": ns.mode,
        "argv": ns.argv,
        "environment": report.environment(device),
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


def _engine_doc(info: EngineInfo, init_seconds: float, mixed_prefill_tokens: int) -> dict[str, Any]:
    """The --json document's "engine": what the engine resolved from the flags."""
    return {
        "init_seconds": init_seconds,
        "num_kvcache_blocks": info.num_blocks,
        "block_size": info.block_size,
        "max_model_len": info.max_model_len,
        "max_num_batched_tokens": info.max_num_batched_tokens,
        "mixed_prefill_tokens": mixed_prefill_tokens,
        "attention_backend": info.attention_backend,
    }


def _run_online(ns: argparse.Namespace, model_dir: str, workload: list[BenchRequest], doc: dict[str, Any]) -> None:
    """The workload through the streaming service, once per --policy on the same engine."""
    from nanovllm_tui.bench.online import run_online
    from nanovllm_tui.engine.serving.thread_service import EngineService

    kwargs = bench_args.engine_kwargs(ns)
    arrivals = poisson_arrivals(len(workload), ns.request_rate, ns.seed)
    trace = report.TraceWriter(ns.trace) if ns.trace else None
    t0 = time.perf_counter()
    with _printer(ns) as phases:
        service = EngineService(model_dir, progress=phases, **kwargs)
    doc["engine"] = _engine_doc(service.engine_info(), time.perf_counter() - t0, kwargs["mixed_prefill_tokens"])
    doc["online"] = {}
    try:
        for i, policy in enumerate(ns.policy):
            if i > 0:  # same prompts again: forget the last run's cached blocks so it can't hit them
                service.reset_prefix_cache()
            service.set_scheduling_policy(policy)
            online, steps = run_online(
                service,
                workload,
                arrivals,
                ns.request_rate,
                ns.temperature,
                policy=policy,
                warmup=not ns.no_warmup and i == 0,
                progress=not ns.no_progress,
                max_concurrency=ns.max_concurrency,
                run_id=f"bench-{policy}",
                say=phases.say,
            )
            if trace is not None:
                for step in steps:
                    trace(step)
            doc["online"][policy] = online.as_dict()
            print(report.online_table(online))
    finally:
        service.shutdown()
        _close_trace(trace, doc)


def _close_trace(trace: report.TraceWriter | None, doc: dict[str, Any]) -> None:
    if trace is not None:
        trace.close()
        doc["trace"] = {"path": trace.path, "steps": trace.count}


def _set_torch_threads(ns: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(torch_threads(ns))


def _run_offline(
    ns: argparse.Namespace, model_dir: str, workload: list[BenchRequest], doc: dict[str, Any]
) -> tuple[OfflineResult, int]:
    """Our engine stepped to completion over the whole workload; also returns its KV cache size in tokens."""
    from nanovllm_tui.bench.compare_hf import free_memory
    from nanovllm_tui.bench.offline import run_offline
    from nanovllm_tui.engine import LLM
    from nanovllm_tui.engine.serving.service_setup import engine_info_of

    trace = report.TraceWriter(ns.trace) if ns.trace else None
    t0 = time.perf_counter()
    with _printer(ns) as phases:
        llm = LLM(model_dir, progress=phases, **bench_args.engine_kwargs(ns))
    info = engine_info_of(llm)
    doc["engine"] = _engine_doc(info, time.perf_counter() - t0, llm.config.mixed_prefill_tokens)
    try:
        ours = run_offline(
            llm,
            workload,
            ns.temperature,
            warmup=not ns.no_warmup,
            progress=not ns.no_progress,
            on_step=trace,
            say=phases.say,
        )
        print(report.nano_vllm_line(ours))
    finally:
        _close_trace(trace, doc)
        llm.shutdown()
        del llm
        free_memory()
    return ours, info.num_blocks * info.block_size


def _compare(
    ns: argparse.Namespace, model_dir: str, workload: list[BenchRequest], device, dtype, kv_tokens: int
) -> list[OfflineResult]:
    """transformers on the same workload, each --compare once, in order."""
    from nanovllm_tui.bench.compare_hf import HFSettings, run_transformers_cb, run_transformers_static

    settings = HFSettings(
        device=str(device),
        dtype=str(dtype).removeprefix("torch."),
        temperature=ns.temperature,
        max_num_seqs=ns.max_num_seqs,
        max_num_batched_tokens=ns.max_num_batched_tokens,
        kv_cache_tokens=kv_tokens,
        page_size=ns.block_size,
        warmup=not ns.no_warmup,
        progress=not ns.no_progress,
    )
    results = []
    for name in dict.fromkeys(ns.compare):
        if name == "transformers":
            results.append(run_transformers_cb(model_dir, workload, settings))
        else:
            results.append(run_transformers_static(model_dir, workload, settings, ns.hf_batch_size))
    return results


def _floor(
    ns: argparse.Namespace,
    model_dir: str,
    workload: list[BenchRequest],
    dtype,
    rates: dict[str, Any],
    ours: OfflineResult,
    doc: dict[str, Any],
) -> None:
    """The hardware floor of the workload, next to our time."""
    from nanovllm_tui.bench.floor import model_shape, workload_floor

    shape = model_shape(model_dir, dtype.itemsize)
    floor = workload_floor(shape, workload, rates["bandwidth_gbs"], rates["peak_tflops"], ns.max_num_seqs)
    doc["floor"] = {**rates, "model_shape": dataclasses.asdict(shape), **floor.as_dict(ours.seconds)}
    print(report.floor_table(floor, ours.seconds, rates["bandwidth_source"], rates["peak_source"]))


def run(ns: argparse.Namespace) -> dict[str, Any]:
    """The whole benchmark; returns the JSON document (also printed as tables along the way)."""
    from nanovllm_tui.bench.compare_hf import free_memory
    from nanovllm_tui.bench.floor import measure_rates
    from nanovllm_tui.engine.devices import resolve_device, resolve_dtype

    if ns.mode == "serve":  # the engine is the server's: no model, no torch here
        from nanovllm_tui.bench.serve import run_serve

        return run_serve(ns)
    model_dir, hf_config, workload = _prepare(ns)
    _set_torch_threads(ns)
    device = resolve_device(ns.device)
    dtype = resolve_dtype(ns.dtype, device, hf_config)
    doc = _document(ns, model_dir, hf_config, workload, device, dtype)
    if ns.mode == "online":
        _run_online(ns, model_dir, workload, doc)
        return doc
    rates = None if ns.no_floor else measure_rates(device, dtype, ns.tensor_parallel_size, ns.bandwidth, ns.peak_tflops)
    free_memory()
    ours, kv_tokens = _run_offline(ns, model_dir, workload, doc)
    results = [ours, *_compare(ns, model_dir, workload, device, dtype, kv_tokens)]
    doc["offline"] = {r.engine: r.as_dict() for r in results}
    doc["ratios"] = {
        f"nanovllm-tui/{r.engine}": (ours.output_tok_s / r.output_tok_s if r.output_tok_s else None)
        for r in results[1:]
    }
    print(report.offline_table(results))
    if rates is not None:
        _floor(ns, model_dir, workload, dtype, rates, ours, doc)
    return doc


def main(argv: list[str] | None = None) -> int:
    """Entry point of `nanovllm-tui bench` / `python -m nanovllm_tui.bench`; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    ns = bench_args.build_parser().parse_args(argv)
    ns.argv = argv
    try:
        doc = run(ns)
    except ValueError as exc:  # user-facing problems (bad flags, model dir, sizes): one line, no traceback
        print(f"nanovllm-tui bench: error: {cli_message(str(exc))}", file=sys.stderr)
        return 2
    if ns.json_path:
        report.write_json(ns.json_path, doc)
        print(f"results written to {ns.json_path}")
    failed = sum(r.get("num_errors", 0) for r in doc.get("offline", {}).values())
    failed += sum(r.get("num_errors", 0) for r in doc.get("online", {}).values())
    failed += doc.get("serve", {}).get("num_errors", 0)
    return 1 if failed else 0
