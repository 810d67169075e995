"""Attach mode end to end: `nanovllm-tui serve --headless` (demo model, CPU) in a subprocess, two chats streamed
through RemoteService at once, the snapshot compared with the server's own /metrics, and an abort that the
server counts as one."""

from __future__ import annotations

import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_serve import ENGINE_FLAGS, ServerProcess

from nanovllm_tui.engine.sampling_params import SamplingParams
from nanovllm_tui.remote.service import RemoteService

KEY = "attach-key"
TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0]


def scrape(url: str) -> dict[str, float]:
    """/metrics read directly with prometheus_client (not through the code under test): sample name -> sum."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=30).text):
        for s in family.samples:
            key = s.name + ("" if "le" not in s.labels else f"{{le={s.labels['le']}}}")
            key += f"{{{s.labels['finished_reason']}}}" if "finished_reason" in s.labels else ""
            out[key] = out.get(key, 0.0) + s.value
    return out


def wait_until(check, timeout: float, what: str):
    """Poll `check` until it returns something truthy (the server updates /metrics a step after a request)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def serve(demo_model_dir):
    srv = ServerProcess("--model", str(demo_model_dir), "--served-model-name", "demo", "--api-key", KEY, *ENGINE_FLAGS)
    try:
        url = srv.wait_for(r"listening on (http://127\.0\.0\.1:\d+)", 120).group(1)
        srv.wait_for(r"engine ready", 300)
        yield url
    finally:
        code = srv.stop()
        assert code == 0, "\n".join(srv.lines)


@pytest.mark.slow
def test_two_streamed_chats_and_the_snapshot_match_the_servers_metrics(serve):
    service = RemoteService.connect(serve, api_key=KEY, interval=60.0)  # the test polls by hand
    try:
        assert service.info().model == "demo" and service.info().max_model_len == 512
        wait_until(lambda: service.snapshot(), 30, "the poller's first scrape")
        service.poller.poll_once()
        raw_before = scrape(serve)
        sp = [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True) for n in (16, 24)]
        with service.batch():  # both requests go out together and are streamed at the same time
            handles = [
                service.submit([{"role": "user", "content": q}], p)
                for q, p in zip(("Name a colour.", "Count to five."), sp)
            ]
        outs = [h.result(timeout=180) for h in handles]
        assert [o.finish_reason for o in outs] == ["length", "length"] and all(o.text for o in outs)
        snap = wait_until(lambda: (s := service.poller.poll_once()).num_running == 0 and s, 30, "an idle server")
        raw = scrape(serve)
    finally:
        service.shutdown()

    def delta(name: str) -> float:
        return raw[name] - raw_before[name]

    assert snap.not_exported == frozenset()
    assert snap.num_running == raw["vllm:num_requests_running"] == 0
    assert snap.num_waiting == raw["vllm:num_requests_waiting"] == 0
    assert snap.kv_cache_usage == raw["vllm:kv_cache_usage_perc"]
    assert snap.generation_tokens_total == raw["vllm:generation_tokens_total"]
    assert snap.interval is not None and snap.generation_throughput is not None
    assert snap.generation_throughput * snap.interval == pytest.approx(delta("vllm:generation_tokens_total"))
    assert delta("vllm:generation_tokens_total") == 16 + 24
    assert snap.prompt_throughput is not None
    assert snap.prompt_throughput * snap.interval == pytest.approx(sum(h.metrics.num_prompt_tokens for h in handles))
    assert snap.preemptions == delta("vllm:num_preemptions_total") == 0
    hits, queries = delta("vllm:prefix_cache_hits_total"), delta("vllm:prefix_cache_queries_total")
    assert queries > 0 and snap.prefix_cache_hit_rate == pytest.approx(hits / queries)
    steps = delta("vllm:iteration_tokens_total_count")
    assert steps > 0
    assert snap.tokens_per_iteration == pytest.approx(delta("vllm:iteration_tokens_total_sum") / steps)
    # Two first tokens: the server's TTFT is at most the client's, and interpolation stays inside its bucket.
    assert delta("vllm:time_to_first_token_seconds_count") == 2 and snap.ttft is not None
    client_ttft = max(h.metrics.time_to_first_token or 0.0 for h in handles)
    bound = min(b for b in TTFT_BUCKETS if b >= client_ttft)
    assert all(q is not None and 0 < q <= bound for q in snap.ttft)
    assert snap.itl is not None and delta("vllm:inter_token_latency_seconds_count") == 15 + 23


@pytest.mark.slow
def test_abort_stops_the_generation_on_the_server(serve):
    service = RemoteService.connect(serve, api_key=KEY, interval=60.0)
    try:
        before = scrape(serve).get("vllm:request_success_total{abort}", 0.0)
        handle = service.submit("Once upon a time", SamplingParams(max_tokens=400, ignore_eos=True))
        assert handle.get(timeout=120) is not None
        assert service.abort(handle.request_id)
        assert handle.result(timeout=1).finish_reason == "abort"
        wait_until(lambda: scrape(serve).get("vllm:request_success_total{abort}", 0.0) == before + 1, 30, "the abort")
        running = wait_until(lambda: (s := scrape(serve))["vllm:num_requests_running"] == 0 and s, 30, "idle")
        assert running["vllm:kv_cache_usage_perc"] == 0.0
    finally:
        service.shutdown()
