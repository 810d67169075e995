"""`nanovllm-tui bench serve --url URL`: the online workload (burst, closed loop or Poisson, as bench online) against
any OpenAI-compatible server, ours or vLLM, reported in bench online's table and JSON record. No engine runs here
and no torch is imported: the client can run anywhere it reaches the server from."""

from __future__ import annotations

import argparse
from typing import Any

from nanovllm_tui.bench import report
from nanovllm_tui.bench.http_load import Server, connect, run_http, warm_up
from nanovllm_tui.bench.workload import BenchRequest, make_offline_workload, poisson_arrivals


def check_flags(ns: argparse.Namespace) -> None:
    """Flags that make no sense against a remote server: one line naming the fix."""
    if not ns.url:
        raise ValueError("bench serve needs the server's --url, e.g. --url http://127.0.0.1:8000")
    if ns.config is not None:
        raise ValueError("--config builds a model here; bench serve measures the server at --url (drop --config)")
    if ns.compare:
        raise ValueError("--compare runs transformers in this process; drop it for bench serve")
    if ns.trace:
        raise ValueError("--trace records engine steps, which a server does not export; drop it for bench serve")
    if ns.json_path:
        report.check_writable(ns.json_path, "--json")


def _check_fits(server: Server, workload: list[BenchRequest]) -> None:
    """The longest request must fit the server's max_model_len, when it says what that is (vLLM and ours do)."""
    longest = max(r.prompt_len + r.max_tokens for r in workload)
    limit = server.model.max_model_len
    if limit is not None and longest > limit:
        raise ValueError(
            f"the workload's longest request needs {longest} tokens > the server's max_model_len {limit}; "
            "lower --prompt-len / --output-len"
        )


def _document(ns: argparse.Namespace, server: Server, workload: list[BenchRequest]) -> dict[str, Any]:
    return {
        "mode": "serve",
        "argv": ns.argv,
        "environment": report.environment(),
        "server": {
            "url": server.client.base_url,
            "model": server.model.id,
            "max_model_len": server.model.max_model_len,
        },
        "workload": {
            "num_requests": ns.num_requests,
            "prompt_len": list(ns.prompt_len),
            "output_len": list(ns.output_len),
            "max_token_id": ns.max_token_id,
            "seed": ns.seed,
            "temperature": ns.temperature,
            "request_rate": ns.request_rate,
            "max_concurrency": ns.max_concurrency,
            "ignore_eos": True,
            "warmup": not ns.no_warmup,
            "prompt_tokens": sum(r.prompt_len for r in workload),
            "output_tokens": sum(r.max_tokens for r in workload),
        },
    }


def run_serve(ns: argparse.Namespace) -> dict[str, Any]:
    """The whole `bench serve` run; returns the JSON document (the table is printed along the way)."""
    check_flags(ns)
    workload = make_offline_workload(ns.num_requests, ns.prompt_len, ns.output_len, ns.seed, ns.max_token_id)
    arrivals = poisson_arrivals(len(workload), ns.request_rate, ns.seed)
    server = connect(ns.url, ns.api_key, ns.model)
    try:
        _check_fits(server, workload)
        doc = _document(ns, server, workload)
        print(f"bench serve: {server.client.base_url}, model {server.model.id!r}", flush=True)
        if not ns.no_warmup:
            warm_up(server, workload, ns.temperature)
        result, requests = run_http(
            server,
            workload,
            arrivals,
            ns.request_rate,
            ns.temperature,
            max_concurrency=ns.max_concurrency,
            progress=not ns.no_progress,
        )
    finally:
        server.client.close()
    doc["serve"] = result.as_dict()
    errors = [r.error or f"finished with {r.finish_reason!r}, not 'length'" for r in requests if not r.timing().ok]
    doc["serve"]["first_error"] = errors[0] if errors else None
    chunks = sum(len(r.chunk_times) for r in requests)
    # One token per chunk unless the server falls behind and sends several at once (ITL is then per chunk).
    doc["serve"]["tokens_per_chunk"] = result.output_tokens / chunks if chunks else None
    print(report.online_table(result))
    if errors:
        print(f"  {len(errors)} requests failed; the first: {errors[0]}")
    return doc
