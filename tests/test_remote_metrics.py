"""Attach mode's /metrics figures: vLLM fixtures (current and older names) served by a real HTTP server whose
values change between polls; every figure is checked against the hand computation in the comments.

The fixtures come from tests/data/make_vllm_metrics.py; the observations between the two scrapes are (MORE):
800 prompt / 600 generated tokens, 3 preemptions, 800 prefix-cache queries with 200 hits, 100 steps of 1400
tokens, TTFT 4x0.03 + 4x0.07 + 2x0.3 s, ITL 500x0.02 + 80x0.06 + 10x0.18 s.
"""

from __future__ import annotations

import math
import re
import threading

import pytest
from remote_servers import ScriptedServer, fixture

from nanovllm_tui.remote.client import RemoteClient
from nanovllm_tui.remote.errors import BadResponse
from nanovllm_tui.remote.metrics import Histogram, parse_metrics
from nanovllm_tui.remote.poller import OK, MetricsPoller, PollStatus
from nanovllm_tui.remote.snapshot import RemoteSnapshot, build_snapshot, histogram_quantile

FIXTURES = {"current": ("vllm_metrics.txt", "vllm_metrics_next.txt"), "old": ("vllm_metrics_old.txt", "vllm_metrics_old_next.txt")}  # fmt: skip

# TTFT deltas by bucket: (0.02,0.04]: 4, (0.06,0.08]: 4, (0.25,0.5]: 2 -> cumulative 4 @0.04, 8 @0.08, 10 @0.5.
# p50: rank 5 in (0.06,0.08] holding 4 after 4 -> 0.06 + 0.02*(5-4)/4 = 0.065
# p90: rank 9 in (0.25,0.5] holding 2 after 8 -> 0.25 + 0.25*(9-8)/2 = 0.375;  p99: rank 9.9 -> 0.4875
TTFT = (0.065, 0.375, 0.4875)
# ITL deltas: (0.01,0.025]: 500, (0.05,0.075]: 80, (0.15,0.2]: 10 -> cumulative 500, 580, 590.
# p50: rank 295 -> 0.01 + 0.015*295/500 = 0.01885;  p90: rank 531 -> 0.05 + 0.025*31/80 = 0.0596875
# p99: rank 584.1 -> 0.15 + 0.05*4.1/10 = 0.1705
ITL = (0.01885, 0.0596875, 0.1705)


def _without_total(text: str) -> str:
    """Counters as a hand-rolled exporter may write them: `vllm:prompt_tokens 1500`, typed as counters."""
    return re.sub(r"(?<!iteration_tokens)_total\b", "", text)


def _untyped_counters(text: str) -> str:
    """Counters without HELP/TYPE lines: then `vllm:prompt_tokens_total` is an untyped sample."""
    counters = set(re.findall(r"^# TYPE (\S+) counter$", text, re.M))
    return "\n".join(ln for ln in text.splitlines() if not (ln.startswith("#") and ln.split()[2] in counters)) + "\n"


def _poll_twice(texts: tuple[str, str]) -> tuple[RemoteSnapshot, RemoteSnapshot, MetricsPoller]:
    with ScriptedServer(metrics=list(texts)) as server:
        poller = MetricsPoller(RemoteClient(server.url), interval=0.05)
        first, second = poller.poll_once(), poller.poll_once()
        assert server.metrics_served == 2
    return first, second, poller


def _check_first(snap: RemoteSnapshot) -> None:
    assert snap.interval is None
    assert (snap.kv_cache_usage, snap.num_running, snap.num_waiting) == (0.25, 3, 1)
    # Interval figures need a previous scrape.
    assert snap.prefix_cache_hit_rate is None and snap.preemptions is None and snap.tokens_per_iteration is None
    assert snap.generation_throughput is None and snap.ttft is None and snap.itl is None
    assert (snap.generation_tokens_total, snap.block_size, snap.num_gpu_blocks) == (4000, 16, 27000)
    assert snap.not_exported == frozenset()


def _check_second(snap: RemoteSnapshot) -> None:
    assert snap.interval is not None and snap.interval > 0
    assert (snap.kv_cache_usage, snap.num_running, snap.num_waiting) == (0.4375, 5, 0)
    assert snap.prefix_cache_hit_rate == pytest.approx(200 / 800)
    assert snap.preemptions == 3
    assert snap.tokens_per_iteration == pytest.approx(1400 / 100)
    assert snap.prompt_throughput == pytest.approx(800 / snap.interval)
    assert snap.generation_throughput == pytest.approx(600 / snap.interval)
    assert snap.ttft == pytest.approx(TTFT)
    assert snap.itl == pytest.approx(ITL)
    assert snap.generation_tokens_total == 4600


@pytest.mark.parametrize("names", sorted(FIXTURES))
def test_snapshots_from_served_fixtures(names):
    texts = tuple(fixture(f) for f in FIXTURES[names])
    if names == "old":  # the old fixture really has only the old names
        assert "vllm:kv_cache_usage_perc" not in texts[0] and "vllm:prefix_cache_hits" not in texts[0]
        assert "vllm:inter_token_latency_seconds" not in texts[0] and "vllm:gpu_cache_usage_perc" in texts[0]
    first, second, poller = _poll_twice(texts)
    _check_first(first)
    _check_second(second)
    assert poller.latest is second and poller.status == PollStatus(OK)


@pytest.mark.parametrize("variant", [_without_total, _untyped_counters])
def test_counters_with_and_without_total(variant):
    texts = tuple(variant(fixture(f)) for f in FIXTURES["current"])
    assert texts[0] != fixture(FIXTURES["current"][0])
    first = build_snapshot(parse_metrics(texts[0], 10.0), None)
    second = build_snapshot(parse_metrics(texts[1], 12.0), parse_metrics(texts[0], 10.0))
    _check_first(first)
    _check_second(second)
    assert second.generation_throughput == pytest.approx(300.0)  # 600 tokens in 2 s


def test_restart_resets_counters():
    """A counter that went down means the server restarted: its new value is the delta (Prometheus' rule)."""
    later, fresh = parse_metrics(fixture("vllm_metrics_next.txt"), 0.0), parse_metrics(fixture("vllm_metrics.txt"), 4.0)
    snap = build_snapshot(fresh, later)
    assert snap.preemptions == 2 and snap.prefix_cache_hit_rate == pytest.approx(300 / 1200)
    assert snap.generation_throughput == pytest.approx(4000 / 4)
    assert snap.tokens_per_iteration == pytest.approx(5500 / 1000)
    # The fresh server's 20 TTFTs: 15 in (0.04,0.06], 5 in (0.75,1.0]; p50 rank 10 -> 0.04 + 0.02*10/15.
    assert snap.ttft is not None and snap.ttft[0] == pytest.approx(0.04 + 0.02 * 10 / 15)


def test_idle_interval_and_missing_metrics():
    """No new traffic: rates are 0 and percentiles None; a family the server lacks is named in not_exported."""
    text = fixture("vllm_metrics.txt")
    same = build_snapshot(parse_metrics(text, 2.0), parse_metrics(text, 1.0))
    assert same.generation_throughput == 0.0 and same.preemptions == 0
    assert same.prefix_cache_hit_rate is None and same.ttft is None and same.tokens_per_iteration is None
    assert same.not_exported == frozenset()
    no_ttft = "\n".join(ln for ln in text.splitlines() if "time_to_first_token" not in ln) + "\n"
    no_kv = "\n".join(ln for ln in no_ttft.splitlines() if "kv_cache_usage" not in ln) + "\n"
    snap = build_snapshot(parse_metrics(no_kv, 2.0), parse_metrics(no_kv, 1.0))
    assert snap.not_exported == {"ttft", "kv_cache_usage"}
    assert snap.ttft is None and snap.kv_cache_usage is None and not snap.exported("ttft") and snap.exported("itl")
    # An empty page (a server without vLLM's metrics) is valid Prometheus text: everything is "not exported".
    empty = build_snapshot(parse_metrics("", 2.0), parse_metrics("", 1.0))
    assert "generation_throughput" in empty.not_exported and empty.generation_throughput is None


def test_mean_of_engines_for_usage_and_sum_for_counts():
    text = (
        "# TYPE vllm:kv_cache_usage_perc gauge\n"
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5\n'
        'vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.25\n'
        "# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{engine="0",model_name="m"} 3\n'
        'vllm:num_requests_running{engine="1",model_name="m"} 4\n'
    )
    sample = parse_metrics(text, 0.0)
    assert sample.value("vllm:kv_cache_usage_perc") == 0.375 and sample.value("vllm:num_requests_running") == 7


def test_histogram_quantile_like_prometheus():
    h = Histogram(((0.1, 2.0), (0.2, 6.0), (math.inf, 8.0)), 8.0, 1.0)
    assert histogram_quantile(0.25, h) == pytest.approx(0.1)  # rank 2: end of the first bucket
    assert histogram_quantile(0.5, h) == pytest.approx(0.15)  # rank 4 of (2, 6] in (0.1, 0.2]
    assert histogram_quantile(0.1, h) == pytest.approx(0.04)  # the first bucket starts at 0
    assert histogram_quantile(0.99, h) == 0.2  # in the +Inf bucket: the highest finite bound
    assert histogram_quantile(0.5, Histogram(((1.0, 0.0), (math.inf, 0.0)), 0.0, 0.0)) is None


@pytest.mark.parametrize(
    "garbage",
    [
        "<html><body>It works!</body></html>",
        '{"status": "ok"}',
        "Internal Server Error",
        "\x00\x01\x02",
        '# TYPE h histogram\nh_bucket{le="abc"} 1\nh_count 1\n',
    ],
)
def test_garbage_is_one_bad_response(garbage):
    with pytest.raises(BadResponse, match=r"^not Prometheus text: ") as e:
        parse_metrics(garbage, 0.0)
    assert "\n" not in str(e.value)


def test_threaded_poller_feeds_listeners():
    """The poller thread polls on its own; listeners see each poll, the third an idle interval."""
    texts = [fixture("vllm_metrics.txt"), fixture("vllm_metrics_next.txt")]
    seen: list[RemoteSnapshot | None] = []
    three = threading.Event()

    def listener(status: PollStatus, snap: RemoteSnapshot | None) -> None:
        if status.state == OK:
            seen.append(snap)
            if len(seen) >= 3:
                three.set()

    with ScriptedServer(metrics=texts) as server:
        poller = MetricsPoller(RemoteClient(server.url), interval=0.05)
        unsubscribe = poller.subscribe(listener)
        poller.start()
        assert three.wait(10)
        unsubscribe()
        poller.stop(timeout=5)
    first, second, third = seen[:3]
    assert first is not None and second is not None and third is not None
    _check_first(first)
    _check_second(second)
    assert third.generation_throughput == 0.0 and third.ttft is None
    assert poller.status.state == "stopped"
