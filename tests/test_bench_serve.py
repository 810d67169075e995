"""`nanovllm-tui bench serve` against the real server (tests/test_serve.py's ServerProcess, demo model, CPU): request
and token counts of each workload shape (burst, closed loop, Poisson) checked against the workload and the server's
own /metrics; TTFT and ITL measured; a bad URL or key ends in one line and exit status 2."""

from __future__ import annotations

import json

import pytest
from test_serve import API_KEY, MODEL, scrape, server, value

from nanovllm_tui.bench import main
from nanovllm_tui.bench.http_load import WARMUP_TOKENS
from nanovllm_tui.bench.workload import make_offline_workload, total_output_tokens

__all__ = ["server"]  # the fixture used here

WORKLOAD = ["--num-requests", "6", "--prompt-len", "8,40", "--output-len", "3,9", "--seed", "3"]
SHAPES = {
    "burst": [],
    "closed-loop": ["--max-concurrency", "2", "--request-rate", "inf"],
    "poisson": ["--request-rate", "20"],
}


def expected_output_tokens() -> int:
    return total_output_tokens(make_offline_workload(6, (8, 40), (3, 9), seed=3))


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_bench_serve_measures_every_request_and_token(server, tmp_path, capsys, shape):
    out = tmp_path / "serve.json"
    before = value(scrape(server), "vllm:generation_tokens_total")
    argv = ["serve", "--url", server.url, "--api-key", API_KEY, *WORKLOAD, *SHAPES[shape]]
    assert main([*argv, "--no-progress", "--json", str(out)]) == 0, capsys.readouterr().err
    generated = value(scrape(server), "vllm:generation_tokens_total") - before
    doc = json.loads(out.read_text())
    r = doc["serve"]
    assert (doc["server"]["model"], doc["server"]["max_model_len"]) == (MODEL, 512)
    assert (r["num_requests"], r["num_errors"], r["first_error"]) == (6, 0, None)
    assert r["output_tokens"] == expected_output_tokens() == generated - WARMUP_TOKENS  # the server agrees
    assert r["ttft"]["count"] == r["e2e"]["count"] == r["tpot"]["count"] == 6
    assert r["itl"]["count"] > 0 and 0 < r["itl"]["p50"] <= r["itl"]["max"]
    assert 0 < r["ttft"]["p50"] < r["e2e"]["p50"] and r["output_tok_s"] > 0
    assert r["tokens_per_chunk"] >= 1 and r["client_cpu_seconds"] > 0
    if shape == "closed-loop":
        assert r["max_concurrency"] == 2 and r["mean_in_flight"] <= 2.0 + 1e-6
    text = capsys.readouterr().out
    assert "Online (http): 6 requests" in text and "TTFT" in text and "client CPU" in text


def test_bad_url_or_key_is_one_line_and_exit_2(server, capsys):
    cases = [
        (["--url", "http://127.0.0.1:1"], "check --url"),
        (["--url", "localhost:8000"], "must start with http://"),
        (["--url", server.url], "401 Unauthorized"),
        (["--url", server.url, "--api-key", "wrong-key"], "check the key passed with --api-key"),
        (["--url", server.url, "--api-key", API_KEY, "--model", "gpt-4"], "does not serve model 'gpt-4'"),
        (["--api-key", API_KEY], "needs the server's --url"),
    ]
    for args, message in cases:
        assert main(["serve", *args, "--num-requests", "1", "--no-progress"]) == 2, args
        err = capsys.readouterr().err
        assert message in err and err.startswith("nanovllm-tui bench: error:") and err.count("\n") == 1, err


def test_serve_only_flags_and_engine_only_flags_are_refused(capsys):
    assert main(["online", "--url", "http://127.0.0.1:8000"]) == 2
    assert "--url is for bench serve" in capsys.readouterr().err
    assert main(["serve", "--url", "http://127.0.0.1:8000", "--compare", "transformers"]) == 2
    assert "--compare" in capsys.readouterr().err
