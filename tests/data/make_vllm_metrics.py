"""Write the /metrics fixtures of tests/test_remote_metrics.py with prometheus_client, as vLLM itself does.

Names, types, labels and buckets are vLLM's (vllm/v1/metrics/loggers.py): "current" is vLLM >= 0.10 (KV usage
as vllm:kv_cache_usage_perc, prefix cache as vllm:prefix_cache_*, ITL as vllm:inter_token_latency_seconds);
"old" is vLLM 0.8-0.9's V1 names (vllm:gpu_cache_usage_perc, vllm:gpu_prefix_cache_*,
vllm:time_per_output_token_seconds). Each has two scrapes: <name>.txt, then <name>_next.txt a while later.
The observations between the two are spelled out below; the tests' expected figures are computed from them by hand.

Run: python tests/data/make_vllm_metrics.py  (rewrites the four .txt files next to this script)
"""

from __future__ import annotations

import pathlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

HERE = pathlib.Path(__file__).parent
LABELS = ["model_name", "engine"]
VALUES = ["Qwen/Qwen3-0.6B", "0"]
ITERATION_BUCKETS = [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0]
TTFT_BUCKETS += [20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]
ITL_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0]
ITL_BUCKETS += [80.0]
E2E_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0]
E2E_BUCKETS += [480.0, 960.0, 1920.0, 7680.0]

# First scrape: the server has served 20 requests (18 finished).
FIRST = dict(
    running=3,
    waiting=1,
    kv=0.25,
    queries=1200,
    hits=300,
    preemptions=2,
    prompt=1500,
    generation=4000,
    iterations=[(3, 990), (253, 10)],  # (tokens in the step, how many steps): sum 5500 over 1000 steps
    ttft=[(0.045, 15), (0.9, 5)],
    itl=[(0.02, 3900), (0.06, 80)],  # 4000 tokens of 20 requests: 3980 gaps
    e2e=[(4.2, 18)],
    success={"stop": 15, "length": 3, "abort": 0},
)
# Between the scrapes: 10 more requests, 800 prompt and 600 generated tokens, 3 preemptions, 800 prefix-cache
# queries with 200 hits, 100 steps carrying 1400 tokens; 10 first tokens and 590 inter-token gaps.
MORE = dict(
    running=5,
    waiting=0,
    kv=0.4375,
    queries=800,
    hits=200,
    preemptions=3,
    prompt=800,
    generation=600,
    iterations=[(5, 90), (95, 10)],
    ttft=[(0.03, 4), (0.07, 4), (0.3, 2)],
    itl=[(0.02, 500), (0.06, 80), (0.18, 10)],
    e2e=[(2.2, 7)],
    success={"stop": 6, "length": 1, "abort": 0},
)


def _registry(old: bool) -> tuple[CollectorRegistry, dict]:
    """Every metric a vLLM server of that age exports that the fixtures fill in."""
    r = CollectorRegistry()
    kv = "vllm:gpu_cache_usage_perc" if old else "vllm:kv_cache_usage_perc"
    prefix = "vllm:gpu_prefix_cache_" if old else "vllm:prefix_cache_"
    itl = "vllm:time_per_output_token_seconds" if old else "vllm:inter_token_latency_seconds"
    itl_doc = (
        "Histogram of time per output token in seconds." if old else "Histogram of inter-token latency in seconds."
    )
    m = dict(
        running=Gauge("vllm:num_requests_running", "Number of requests in model execution batches.", LABELS, registry=r),
        waiting=Gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", LABELS, registry=r),
        kv=Gauge(kv, "KV-cache usage. 1 means 100 percent usage.", LABELS, registry=r),
        queries=Counter(prefix + "queries", "Prefix cache queries, in terms of number of queried tokens.", LABELS, registry=r),
        hits=Counter(prefix + "hits", "Prefix cache hits, in terms of number of cached tokens.", LABELS, registry=r),
        preemptions=Counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.", LABELS, registry=r),
        prompt=Counter("vllm:prompt_tokens", "Number of prefill tokens processed.", LABELS, registry=r),
        generation=Counter("vllm:generation_tokens", "Number of generation tokens processed.", LABELS, registry=r),
        success=Counter("vllm:request_success", "Count of successfully processed requests.", [*LABELS, "finished_reason"], registry=r),
        iterations=Histogram("vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.", LABELS, buckets=ITERATION_BUCKETS, registry=r),
        ttft=Histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", LABELS, buckets=TTFT_BUCKETS, registry=r),
        itl=Histogram(itl, itl_doc, LABELS, buckets=ITL_BUCKETS, registry=r),
        e2e=Histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", LABELS, buckets=E2E_BUCKETS, registry=r),
    )  # fmt: skip
    info = Gauge("vllm:cache_config_info", "Information of the LLMEngine CacheConfig", [
        "block_size", "cache_dtype", "enable_prefix_caching", "gpu_memory_utilization", "num_cpu_blocks",
        "num_gpu_blocks", "engine"], registry=r)  # fmt: skip
    info.labels("16", "auto", "True", "0.9", "None", "27000", "0").set(1)
    return r, m


def _apply(m: dict, step: dict) -> None:
    for name in ("running", "waiting", "kv"):
        m[name].labels(*VALUES).set(step[name])
    for name in ("queries", "hits", "preemptions", "prompt", "generation"):
        m[name].labels(*VALUES).inc(step[name])
    for reason, n in step["success"].items():
        m["success"].labels(*VALUES, reason).inc(n)
    for name in ("iterations", "ttft", "itl", "e2e"):
        for value, times in step[name]:
            for _ in range(times):
                m[name].labels(*VALUES).observe(value)


def main() -> None:
    for old, stem in ((False, "vllm_metrics"), (True, "vllm_metrics_old")):
        registry, metrics = _registry(old)
        _apply(metrics, FIRST)
        (HERE / f"{stem}.txt").write_bytes(generate_latest(registry))
        _apply(metrics, MORE)
        (HERE / f"{stem}_next.txt").write_bytes(generate_latest(registry))


if __name__ == "__main__":
    main()
