"""The serve ASGI app in process (httpx.ASGITransport) over a real thread EngineService and the demo model:
503 while the engine starts and after it dies, OpenAI error bodies, reasoning_content, and /metrics counters
equal to the engine's own EngineStats after a workload."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from nanovllm_tui.engine.serving.thread_service import EngineService
from nanovllm_tui.server.api import create_app
from nanovllm_tui.server.state import ServerState

ENGINE = dict(device="cpu", max_model_len=512, kvcache_block_size=16, num_kvcache_blocks=96)


def client_of(state: ServerState) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(create_app(state)), base_url="http://serve", timeout=120)


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k not in ("model_name", "engine")))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


def test_503_while_the_engine_starts_and_after_a_failed_start():
    state = ServerState("demo")

    async def run() -> None:
        async with client_of(state) as c:
            for method, path, body in (("GET", "/health", None), ("GET", "/v1/models", None), ("POST", "/v1/chat/completions", CHAT)):  # fmt: skip
                r = await c.request(method, path, json=body)
                assert r.status_code == 503, r.text
                assert r.json()["error"]["type"] == "service_unavailable"
                assert "starting" in r.json()["error"]["message"]
            metrics = samples((await c.get("/metrics")).text)
            assert metrics[("vllm:num_requests_running", ())] == 0.0
            state.fail("ModelLoadError: no weights")
            r = await c.post("/v1/chat/completions", json=CHAT)
            assert r.status_code == 503 and "no weights" in r.json()["error"]["message"]
            r = await c.get("/no/such/route")
            assert r.status_code == 404 and set(r.json()["error"]) == {"message", "type", "param", "code"}

    asyncio.run(run())
    assert state.status == "dead"


def test_503_after_the_engine_stops(demo_model_dir):
    svc = EngineService(str(demo_model_dir), **ENGINE)
    state = ServerState("demo")
    state.attach(svc)

    async def run() -> None:
        async with client_of(state) as c:
            assert (await c.get("/health")).status_code == 200
            assert (await c.post("/v1/chat/completions", json=CHAT)).status_code == 200
            svc.shutdown()
            r = await c.post("/v1/chat/completions", json=CHAT)
            assert r.status_code == 503 and "stopped" in r.json()["error"]["message"], r.text
            assert (await c.get("/health")).status_code == 503

    try:
        asyncio.run(run())
    finally:
        svc.shutdown()


def test_metrics_counters_equal_the_engine_stats(demo_model_dir):
    """Counters after a workload with shared prefixes equal the engine's cumulative EngineStats."""
    service = EngineService(str(demo_model_dir), **ENGINE)
    state = ServerState("demo")
    state.attach(service)
    shared = "Shared system prompt: answer briefly and kindly, with one example. " * 4

    async def one(c: httpx.AsyncClient, i: int) -> dict:
        body = {"prompt": shared + f"Item {i}.", "max_tokens": 4 + i % 3, "temperature": 0, "ignore_eos": True}
        r = await c.post("/v1/completions", json=body)
        assert r.status_code == 200, r.text
        return r.json()["usage"]

    async def run() -> tuple[list[dict], str]:
        async with client_of(state) as c:
            first = [await one(c, 0)]  # caches the shared blocks, then 7 at once reuse them
            rest = await asyncio.gather(*(one(c, i) for i in range(1, 8)))
            return first + list(rest), (await c.get("/metrics")).text

    try:
        usages, text = asyncio.run(run())
        s, m = service.stats(), samples(text)
    finally:
        state.detach()
        service.shutdown()
    assert s.num_preemptions == m[("vllm:num_preemptions_total", ())] == 0
    assert m[("vllm:prefix_cache_queries_total", ())] == s.prefix_cache_queries == sum(u["prompt_tokens"] for u in usages)  # fmt: skip
    assert m[("vllm:prefix_cache_hits_total", ())] == s.prefix_cache_hits > 0
    # vLLM's prompt tokens include the cached ones; generation tokens are every sampled token (the first one
    # is sampled by the prefill step, each later one by a decode step).
    assert m[("vllm:prompt_tokens_total", ())] == s.num_prefill_tokens + s.prefix_cache_hits
    assert m[("vllm:generation_tokens_total", ())] == s.num_decode_tokens + len(usages)
    assert m[("vllm:generation_tokens_total", ())] == sum(u["completion_tokens"] for u in usages)
    assert m[("vllm:iteration_tokens_total_sum", ())] == s.num_prefill_tokens + s.num_decode_tokens
    assert m[("vllm:iteration_tokens_total_count", ())] == s.num_steps
    assert m[("vllm:request_success_total", (("finished_reason", "length"),))] == len(usages)
    assert m[("vllm:request_success_total", (("finished_reason", "abort"),))] == 0
    assert m[("vllm:e2e_request_latency_seconds_count", ())] == len(usages)
    assert m[("vllm:kv_cache_usage_perc", ())] == s.kv_cache_usage_perc == 0.0
    assert m[("vllm:num_requests_running", ())] == m[("vllm:num_requests_waiting", ())] == 0


THINK_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{% else %}<think>\n{% endif %}"
)


@pytest.fixture(scope="module")
def think_service(tmp_path_factory, demo_model_dir):
    """The demo model with a Qwen3-style chat template: answers open inside <think> unless enable_thinking=false."""
    d = tmp_path_factory.mktemp("think-model")
    for f in demo_model_dir.iterdir():
        if f.name != "chat_template.jinja":
            (d / f.name).symlink_to(f)
    (d / "chat_template.jinja").write_text(THINK_TEMPLATE)
    svc = EngineService(str(d), **ENGINE)
    yield svc
    svc.shutdown()


def test_reasoning_content_in_the_message_and_the_stream(think_service):
    state = ServerState("think")
    state.attach(think_service)
    body = {"messages": [{"role": "user", "content": "What is 2+2?"}], "max_tokens": 6, "temperature": 0}

    async def run() -> None:
        async with client_of(state) as c:
            r = (await c.post("/v1/chat/completions", json=body)).json()
            message = r["choices"][0]["message"]
            assert message["reasoning_content"] and message["content"] == "", message  # still thinking after 6 tokens
            events = []
            async with c.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as resp:
                async for line in resp.aiter_lines():
                    if line.startswith("data: {"):
                        events.append(json.loads(line.removeprefix("data: ")))
            deltas = [e["choices"][0]["delta"] for e in events]
            assert "".join(d.get("reasoning_content", "") for d in deltas) == message["reasoning_content"]
            off = {**body, "chat_template_kwargs": {"enable_thinking": False}}
            message = (await c.post("/v1/chat/completions", json=off)).json()["choices"][0]["message"]
            assert message["content"] and message["reasoning_content"] is None, message
            off["chat_template_kwargs"] = {"enable_thinking": "yes"}
            r = await c.post("/v1/chat/completions", json=off)
            assert r.status_code == 400 and r.json()["error"]["param"] == "chat_template_kwargs.enable_thinking"

    try:
        asyncio.run(run())
    finally:
        state.detach()
