"""`nanovllm-tui serve --headless` under load, in a subprocess on 127.0.0.1 (the server of tests/test_serve.py): 64
concurrent streams, clients that disconnect mid-answer (their requests abort and free their blocks), and /metrics
parsed with prometheus_client: names, types and counts that follow the requests."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_serve import API_KEY, MODEL, client, http, scrape, server, value

pytestmark = pytest.mark.slow  # 64 concurrent HTTP streams against a server subprocess

__all__ = ["client", "server"]  # fixtures used here


def test_64_concurrent_streams_finish_with_their_token_counts(server):
    async def one(c: openai.AsyncOpenAI, i: int) -> tuple[int, int, str | None]:
        stream = await c.completions.create(
            model=MODEL,
            prompt=f"Request {i}: count to ten.",
            max_tokens=6,
            temperature=0.8,
            seed=i,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True, "return_token_ids": True},
        )
        tokens, usage, reason = 0, 0, None
        async for chunk in stream:
            for choice in chunk.choices:
                tokens += len(choice.model_extra.get("token_ids") or [])
                reason = choice.finish_reason or reason
            if chunk.usage is not None:
                usage = chunk.usage.completion_tokens
        return tokens, usage, reason

    async def run() -> list[tuple[int, int, str | None]]:
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=API_KEY, timeout=300, max_retries=0) as c:
            return await asyncio.gather(*(one(c, i) for i in range(64)))

    results = asyncio.run(run())
    assert results == [(6, 6, "length")] * 64
    metrics = scrape(server)
    assert value(metrics, "vllm:num_requests_running") == 0


def wait_for_aborts(server, before: dict, count: int) -> dict:
    """/metrics once `count` more requests have finished with "abort" and none runs."""
    deadline = time.monotonic() + 30
    while True:
        m = scrape(server)
        aborted = value(m, "vllm:request_success_total", finished_reason="abort") - value(
            before, "vllm:request_success_total", finished_reason="abort"
        )
        if aborted == count and value(m, "vllm:num_requests_running") == 0:
            return m
        assert time.monotonic() < deadline, f"the abandoned requests were not aborted: {m}"
        time.sleep(0.1)


def test_a_client_disconnecting_mid_stream_aborts_its_request(server):
    before = scrape(server)
    with http(server) as c:
        body = {"model": MODEL, "prompt": "Tell a long story.", "max_tokens": 400, "stream": True, "ignore_eos": True}
        with c.stream("POST", "/v1/completions", json=body) as r:
            chunks = 0
            for line in r.iter_lines():
                chunks += line.startswith("data: ")
                if chunks >= 3:
                    break  # leaving the block closes the connection mid-stream
    m = wait_for_aborts(server, before, 1)
    assert value(m, "vllm:kv_cache_usage_perc") == 0.0  # its blocks are free (or cached), none in use
    assert value(m, "vllm:generation_tokens_total") - value(before, "vllm:generation_tokens_total") < 400
    server.wait_for(r"status=abort", 10)


def test_a_client_giving_up_on_a_whole_answer_aborts_its_request(server):
    before = scrape(server)
    body = {"model": MODEL, "prompt": "Tell a long story.", "max_tokens": 400, "ignore_eos": True}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with pytest.raises(httpx.ReadTimeout):  # the client stops waiting and closes the connection
        httpx.post(server.url + "/v1/completions", json=body, headers=headers, timeout=1.5)
    m = wait_for_aborts(server, before, 1)
    assert value(m, "vllm:kv_cache_usage_perc") == 0.0


def test_metrics_names_types_and_counts_follow_the_requests(server, client):
    before = scrape(server)
    shared = "You are a helpful assistant. Answer in one short sentence, please, and be kind. " * 3
    usages = []
    for i in range(4):
        r = client.completions.create(
            model=MODEL, prompt=shared + f"Question {i}?", max_tokens=5, temperature=0, extra_body={"ignore_eos": True}
        )
        usages.append(r.usage)
    after = scrape(server)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("vllm:prompt_tokens_total") == sum(u.prompt_tokens for u in usages)
    assert delta("vllm:generation_tokens_total") == sum(u.completion_tokens for u in usages) == 20
    assert delta("vllm:request_success_total", finished_reason="length") == 4
    assert delta("vllm:prefix_cache_queries_total") == sum(u.prompt_tokens for u in usages)
    assert delta("vllm:prefix_cache_hits_total") >= 3 * 48  # the later three reuse the shared blocks
    assert delta("vllm:e2e_request_latency_seconds_count") == 4
    assert delta("vllm:time_to_first_token_seconds_count") == 4
    assert delta("vllm:inter_token_latency_seconds_count") == 4 * 4
    assert delta("vllm:iteration_tokens_total_count") >= 5
    assert value(after, "vllm:time_to_first_token_seconds_bucket", le="2560.0") == value(
        after, "vllm:time_to_first_token_seconds_count"
    )
    families = {f.name: f.type for f in text_string_to_metric_families(httpx.get(server.url + "/metrics").text)}
    for name, kind in {
        "vllm:num_requests_running": "gauge",
        "vllm:num_requests_waiting": "gauge",
        "vllm:kv_cache_usage_perc": "gauge",
        "vllm:prefix_cache_queries": "counter",
        "vllm:prefix_cache_hits": "counter",
        "vllm:num_preemptions": "counter",
        "vllm:prompt_tokens": "counter",
        "vllm:generation_tokens": "counter",
        "vllm:request_success": "counter",
        "vllm:iteration_tokens_total": "histogram",
        "vllm:time_to_first_token_seconds": "histogram",
        "vllm:inter_token_latency_seconds": "histogram",
        "vllm:e2e_request_latency_seconds": "histogram",
    }.items():
        assert families.get(name) == kind, (name, families.get(name))
