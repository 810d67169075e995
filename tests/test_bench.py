"""`nanovllm-tui bench` on CPU: the CLI end to end (ours and transformers CB on a tiny random Qwen3, offline and
online), the floor arithmetic on a hand-computed case, and the default workload's token count."""

from __future__ import annotations

import itertools
import json
import math
import random
import re
import subprocess
import sys
import time

import pytest

from nanovllm_tui.bench import main
from nanovllm_tui.bench.floor import (
    ModelShape,
    attention_pairs,
    kv_token_reads,
    min_decode_steps,
    model_shape,
    workload_floor,
)
from nanovllm_tui.bench.results import percentile
from nanovllm_tui.bench.workload import BenchRequest, make_offline_workload, poisson_arrivals, total_output_tokens
from nanovllm_tui.engine.config import SERVING_MIXED_PREFILL_TOKENS

TINY_QWEN3 = {  # a Qwen3 config.json: architecture, shape, vocabulary and special tokens, numerics
    **dict(architectures=["Qwen3ForCausalLM"], model_type="qwen3", num_hidden_layers=2),
    **dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=16),
    **dict(vocab_size=2048, max_position_embeddings=1024, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2),
    **dict(rms_norm_eps=1e-6, rope_theta=10000.0, torch_dtype="float32"),
}
NUM_REQUESTS = 6
SMALL = (
    f"--num-requests {NUM_REQUESTS} --prompt-len 8,48 --output-len 4,24 --max-token-id 2000 --device cpu "
    "--block-size 16 --max-model-len 128 --num-kvcache-blocks 96 --max-num-seqs 4 --no-progress"
).split()


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    """A tiny Qwen3 config.json and a private cache dir for the random-weight model built from it."""
    root = tmp_path_factory.mktemp("bench")
    path = root / "tiny-qwen3.json"
    path.write_text(json.dumps(TINY_QWEN3))
    return ["--config", str(path), "--cache-dir", str(root / "cache")]


# -- workload ------------------------------------------------------------------------------------


def test_default_workload_is_nano_vllms_bench():
    workload = make_offline_workload()
    assert len(workload) == 256
    assert total_output_tokens(workload) == 133_966
    # nano-vllm's own code, on the module-level generator (state restored afterwards).
    state = random.getstate()
    try:
        random.seed(0)
        prompts = [[random.randint(0, 10000) for _ in range(random.randint(100, 1024))] for _ in range(256)]
        max_tokens = [random.randint(100, 1024) for _ in range(256)]
    finally:
        random.setstate(state)
    assert [list(r.prompt_token_ids) for r in workload] == prompts
    assert [r.max_tokens for r in workload] == max_tokens


def test_workload_validates_and_is_deterministic():
    a = make_offline_workload(5, (3, 7), (2, 4), seed=7, max_token_id=50)
    assert a == make_offline_workload(5, (3, 7), (2, 4), seed=7, max_token_id=50)
    assert all(3 <= r.prompt_len <= 7 and 2 <= r.max_tokens <= 4 and max(r.prompt_token_ids) <= 50 for r in a)
    with pytest.raises(ValueError, match="prompt_len_range"):
        make_offline_workload(5, (0, 7))
    with pytest.raises(ValueError, match="num_requests"):
        make_offline_workload(0)


def test_poisson_arrivals():
    times = poisson_arrivals(4000, 20.0, seed=1)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert times[0] == 0 and all(g >= 0 for g in gaps)
    assert abs(sum(gaps) / len(gaps) - 1 / 20) < 0.005  # mean gap 1/rate (std error ~0.0008)
    assert poisson_arrivals(3, math.inf) == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="request_rate"):
        poisson_arrivals(3, 0)


def test_percentile_matches_numpy_linear():
    import numpy as np

    values = [5.0, 1.0, 9.0, 3.0, 7.5, 2.25]
    for q in (0, 50, 90, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert percentile([], 50) is None


# -- floor arithmetic -----------------------------------------------------------------------------


def test_floor_hand_computed_case():
    # non-embedding params, vocab, hidden, layers, heads, kv heads, head dim, dtype bytes
    shape = ModelShape(1000, 10, 4, 2, 2, 1, 2, 2)
    workload = [BenchRequest((1, 2, 3), 2), BenchRequest((4,), 4)]
    # KV of the k-th generated token (k >= 2) = p + k - 1 tokens: (3+1) = 4 and (1+1)+(1+2)+(1+3) = 9.
    assert kv_token_reads(3, 2) == 4 and kv_token_reads(1, 4) == 9
    # Tokens through the network p + o - 1 = 4 each, causal pairs 1+2+3+4 = 10 each.
    assert attention_pairs(3, 2) == 10 and attention_pairs(1, 4) == 10
    # Decode steps: max(o) - 1 = 3 with room for both; 4 when only one sequence fits per step.
    assert min_decode_steps([2, 4], 8) == 3 and min_decode_steps([2, 4], 1) == 4
    f = workload_floor(shape, workload, bandwidth_gbs=1e-6, peak_tflops=1e-9, max_num_seqs=8)
    assert shape.weight_bytes_per_step == (1000 + 40) * 2 == 2080
    assert shape.kv_bytes_per_token == 2 * 2 * 1 * 2 * 2 == 16
    assert f.decode_steps == 3
    assert f.weight_bytes == 3 * 2080 == 6240
    assert f.kv_bytes == 13 * 16 == 208
    assert f.bytes_total == 6448
    # 2*1000*8 (weights x tokens) + 2*40*6 (LM head x sampled rows) + 4*2*2*2*20 (attention pairs).
    assert f.flops == 16000 + 480 + 640 == 17120
    assert f.memory_seconds == pytest.approx(6448 / 1000)  # 1e-6 GB/s = 1000 B/s
    assert f.compute_seconds == pytest.approx(17120 / 1000)  # 1e-9 TFLOPS = 1000 FLOP/s
    assert f.memory_tok_s == pytest.approx(6 / 6.448)
    d = f.as_dict(measured_seconds=12.896)
    assert d["memory_fraction"] == pytest.approx(0.5)


def test_floor_of_the_default_workload_on_qwen3_06b():
    """The issue's figure: about 38k tok/s at a 4.3 TB/s copy rate, Qwen3-0.6B in bf16."""
    h, i, layers = 1024, 3072, 28
    per_layer = h * 16 * 128 + 2 * h * 8 * 128 + 16 * 128 * h + 3 * h * i + 2 * h + 2 * 128
    shape = ModelShape(layers * per_layer + h, 151936, h, layers, 16, 8, 128, 2)
    f = workload_floor(shape, make_offline_workload(), 4300, 989, max_num_seqs=256)
    assert 37_000 < f.memory_tok_s < 39_000


# -- the CLI end to end ------------------------------------------------------------------------------


def test_bench_modules_do_not_import_textual():
    code = (
        "import sys; import nanovllm_tui.bench.cli, nanovllm_tui.bench.offline, nanovllm_tui.bench.online, "
        "nanovllm_tui.bench.compare_hf, nanovllm_tui.bench.floor, nanovllm_tui.bench.model_source; "
        "assert 'textual' not in sys.modules, 'bench imported textual'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def check_trace(trace, count: int, num_steps: int, expected_tokens: int) -> None:
    """The trace holds every timed step: each request finishes once, and (no preemption) every output token but
    each request's first comes from a decode."""
    steps = [json.loads(line) for line in trace.read_text().splitlines()]
    assert len(steps) == count == num_steps > 0
    finished = [r for s in steps for r in s["finished_request_ids"]]
    assert len(finished) == len(set(finished)) == NUM_REQUESTS
    assert sum(s["num_preemptions"] for s in steps) == 0
    assert sum(s["num_decode_tokens"] for s in steps) == expected_tokens - NUM_REQUESTS
    assert max(s["num_seqs"] for s in steps) <= 4  # --max-num-seqs reached the engine


def test_offline_cli_with_transformers_json_and_trace(tiny_config, tmp_path, capsys):
    out, trace = tmp_path / "bench.json", tmp_path / "trace.jsonl"
    extra = f"--compare transformers --compare transformers-static --hf-batch-size 4 --json {out} --trace {trace}"
    rc = main(["offline", *tiny_config, *SMALL, *extra.split()])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "Total: " in printed and "nanovllm-tui / transformers-cb:" in printed and "Floor:" in printed
    doc = json.loads(out.read_text())
    sections = {"mode", "argv", "environment", "model", "engine_options", "workload", "engine", "offline"}
    assert sections | {"ratios", "floor", "trace"} <= set(doc)
    assert doc["engine"]["mixed_prefill_tokens"] == 0  # offline: the engine's own default, no cap
    expected = doc["workload"]["output_tokens"]
    assert expected == total_output_tokens(make_offline_workload(NUM_REQUESTS, (8, 48), (4, 24), 0, 2000))
    assert set(doc["offline"]) == {"nanovllm-tui", "transformers-cb", "transformers-static"}
    for result in doc["offline"].values():
        assert result["num_errors"] == 0 and result["num_requests"] == NUM_REQUESTS
        assert result["output_tokens"] == result["expected_output_tokens"] == expected
        assert result["seconds"] > 0 and result["output_tok_s"] == pytest.approx(expected / result["seconds"])
    ours, hf = doc["offline"]["nanovllm-tui"], doc["offline"]["transformers-cb"]
    assert doc["ratios"]["nanovllm-tui/transformers-cb"] == pytest.approx(ours["output_tok_s"] / hf["output_tok_s"])
    assert hf["extra"]["attn_implementation"]
    static = doc["offline"]["transformers-static"]["extra"]
    assert static["generated_including_padding"] >= expected  # each batch runs to its longest request
    floor = doc["floor"]
    keys = ["bandwidth_gbs", "peak_tflops", "decode_steps", "weight_bytes", "kv_bytes", "flops", "memory_floor_tok_s"]
    for key in [*keys, "compute_floor_tok_s", "memory_fraction", "compute_fraction", "model_shape"]:
        assert floor[key] is not None and floor[key] == floor[key], key
    assert floor["bandwidth_gbs"] > 0 and floor["memory_fraction"] > 0
    check_trace(trace, doc["trace"]["steps"], ours["extra"]["num_steps"], expected)


def test_online_cli_through_the_service(tiny_config, tmp_path, capsys):
    out, trace = tmp_path / "online.json", tmp_path / "trace.jsonl"
    extra = f"--request-rate 50 --policy prefill_first --json {out} --trace {trace}"
    rc = main(["online", *tiny_config, *SMALL, *extra.split()])
    assert rc == 0
    err = capsys.readouterr().err  # the phases before the timed run, even with --no-progress (no bars)
    assert re.search(r"^load: \d+\.\d MB in \d+\.\d s", err, re.M), err
    assert err.index("warming up: 1 request…") < err.index("warm-up done in ")
    doc = json.loads(out.read_text())
    assert doc["engine"]["mixed_prefill_tokens"] == SERVING_MIXED_PREFILL_TOKENS  # the streaming service's default
    online = doc["online"]["prefill_first"]
    assert online["num_requests"] == NUM_REQUESTS and online["num_errors"] == 0
    assert online["policy"] == "prefill_first" and online["request_rate"] == 50
    workload = make_offline_workload(NUM_REQUESTS, (8, 48), (4, 24), 0, 2000)
    assert online["output_tokens"] == total_output_tokens(workload)
    for name in ("ttft", "itl", "tpot", "e2e"):
        d = online[name]
        assert 0 <= d["p50"] <= d["p90"] <= d["p99"] <= d["max"], name
    assert online["ttft"]["count"] == online["e2e"]["count"] == NUM_REQUESTS
    assert online["itl"]["count"] == online["output_tokens"] - NUM_REQUESTS
    assert online["e2e"]["p50"] >= online["ttft"]["p50"]
    assert online["output_tok_s"] > 0 and online["mean_in_flight"] > 0
    assert all(json.loads(line)["policy"] == "prefill_first" for line in trace.read_text().splitlines())


def test_offline_cli_shows_the_warm_up_before_the_timed_bar(tiny_config, capsys):
    with_bar = [a for a in SMALL if a != "--no-progress"]
    assert main(["offline", *tiny_config, *with_bar, "--no-floor"]) == 0
    err = capsys.readouterr().err
    load = re.search(r"^load: \d+\.\d MB in \d+\.\d s", err, re.M)
    done = re.search(r"^warm-up done in (\d+\.\d) s$", err, re.M)
    assert load and done, err
    # The engine loads, then the warm-up is told as such, then the timed run's bar starts (at 0 %).
    assert load.start() < err.index("warming up: 1 request…\n") < done.start() < err.index("nanovllm-tui:   0%")
    assert main(["offline", *tiny_config, *SMALL, "--no-floor", "--no-warmup"]) == 0
    assert "warm" not in capsys.readouterr().err


def test_config_model_is_built_once_and_reused(tiny_config):
    from nanovllm_tui.bench.model_source import resolve_model

    cfg, cache = tiny_config[1], tiny_config[3]
    path = resolve_model(None, cfg, cache)
    assert (path / "config.json").is_file() and (path / "tokenizer.json").is_file()
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert resolve_model(None, cfg, cache) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime
    shape = model_shape(str(path), 4)
    assert shape.vocab_size == 2048 and shape.num_layers == 2 and shape.num_kv_heads == 2
    # 2 layers x (q 64*64 + k,v 2*64*32 + o 64*64 + mlp 3*64*128 + norms 2*64 + q/k norm 2*16) + final norm 64.
    assert shape.non_embedding_params == 2 * (4096 + 4096 + 4096 + 24576 + 128 + 32) + 64


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--max-token-id", "5000"], "outside the model's vocabulary"),
        (["--output-len", "100,200"], "--max-model-len"),
        (["--policy", "mixed,prefill_first"], "offline mode runs one --policy"),
        (["online", "--compare", "transformers"], "--compare runs the offline workload"),
    ],
)
def test_bad_flags_fail_with_a_message(tiny_config, capsys, extra, message):
    assert main([*tiny_config, *SMALL, *extra]) == 2
    assert message in capsys.readouterr().err


def test_missing_config_file_fails_with_a_message(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "nope.json"), "--no-progress"]) == 2
    assert "cannot read --config" in capsys.readouterr().err


def test_bad_engine_flags_and_model_paths(tiny_config, tmp_path, capsys):
    """The app's flag checks (argparse: one line, exit 2) and model checks, before anything loads."""
    with pytest.raises(SystemExit) as exc:
        main([*tiny_config, *SMALL, "--block-size", "17"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "\n" not in err and "power of two" in err
    (tmp_path / "weights.bin").write_bytes(b"")
    assert main(["--model", str(tmp_path / "weights.bin"), *SMALL]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
    assert main(["--model", str(tmp_path), *tiny_config, *SMALL]) == 2
    assert "not both" in capsys.readouterr().err


def test_without_model_or_config_it_runs_the_demo_model(demo_model_dir, tmp_path):
    out = tmp_path / "demo.json"
    small = "--num-requests 2 --prompt-len 8 --output-len 4 --max-model-len 64 --num-kvcache-blocks 16 --no-floor"
    assert main(["offline", "--device", "cpu", "--no-progress", "--json", str(out), *small.split()]) == 0
    doc = json.loads(out.read_text())
    assert doc["model"]["dir"] == str(demo_model_dir) and doc["engine"]["block_size"] == 16  # the app's default
    assert doc["offline"]["nanovllm-tui"]["output_tokens"] == 8


def test_load_driver_caps_in_flight_batches_arrivals_and_stops(tiny_qwen3_gqa_dir):
    from nanovllm_tui.bench.driver import LoadDriver
    from nanovllm_tui.engine.serving.thread_service import EngineService

    workload = make_offline_workload(6, (4, 12), (3, 8), seed=1, max_token_id=1000)
    svc = EngineService(str(tiny_qwen3_gqa_dir), device="cpu", kvcache_block_size=16, max_model_len=64)
    try:
        capped = LoadDriver(svc, workload, [0.0] * 6, max_concurrency=2, record_steps=True, run_id="capped")
        capped.start()
        capped.wait(timeout=120)
        assert capped.submit_error is None and [h.finish_reason for h in capped.handles] == ["length"] * 6
        assert [h.metrics.num_generation_tokens for h in capped.handles] == [r.max_tokens for r in workload]
        assert max(s.num_running + s.num_waiting for s in capped.steps) == 2
        together = LoadDriver(svc, workload, [0.0] * 6, record_steps=True, run_id="together")
        together.start()
        together.wait(timeout=120)
        assert together.steps[0].num_seqs == 6  # one batch: all six start in the first step
        stopped = LoadDriver(svc, workload, [0.0, *[600.0] * 5], run_id="stopped")
        stopped.start()
        deadline = time.monotonic() + 60
        while not stopped.handles and time.monotonic() < deadline:
            time.sleep(0.01)
        stopped.stop()
        stopped.wait(timeout=30)  # the first request ends (aborted or done) and the others are never sent
        assert len(stopped.handles) == 1 and stopped.handles[0].finish_reason in ("abort", "length")
    finally:
        svc.shutdown()
