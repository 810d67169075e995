"""The sampling and stopping fields of `nanovllm-tui serve` as the official openai client sends them, against the
server subprocess of tests/test_serve.py (the demo model on CPU): max_completion_tokens over max_tokens, stop
strings, top_k=1 and a tiny top_p equal to greedy, seeds that repeat and differ; and the wire format of a stream
(`data: {json}` events, `data: [DONE]` last, no pings)."""

from __future__ import annotations

import json

import openai
import pytest
from test_serve import API_KEY, MODEL, client, http, server

__all__ = ["client", "server"]  # fixtures used here

PROMPT = [1, 504, 3458, 282, 4649, 314]  # token ids: no chat template between the test and the sampler
N = 16


def token_ids(c: openai.OpenAI, **fields: object) -> list[int]:
    """The completion's token ids for PROMPT, N tokens (ignore_eos) unless `fields` say otherwise."""
    extra = {"ignore_eos": True, "return_token_ids": True, **fields.pop("extra", {})}
    got = c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=N, extra_body=extra, **fields)
    ids = got.choices[0].model_extra["token_ids"]
    assert len(ids) == got.usage.completion_tokens
    return ids


@pytest.fixture(scope="module")
def greedy(server) -> list[int]:
    c = openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, timeout=120, max_retries=0)
    ids = token_ids(c, temperature=0)
    assert len(ids) == N and len(set(ids)) > 1
    return ids


def test_max_completion_tokens_wins_over_max_tokens(client):
    messages = [{"role": "user", "content": "Tell me a long story about a dragon."}]
    for max_tokens, max_completion in ((20, 5), (3, 7)):  # smaller and larger: it is not the minimum of the two
        r = client.chat.completions.create(
            model=MODEL,
            messages=messages,
            max_tokens=max_tokens,
            max_completion_tokens=max_completion,
            temperature=0,
            extra_body={"ignore_eos": True},
        )
        assert r.usage.completion_tokens == max_completion and r.choices[0].finish_reason == "length"
    streamed = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_completion_tokens=4,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(streamed)
    assert chunks[-1].usage.completion_tokens == 4
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_stop_strings_end_the_text_before_them(client):
    def complete(**fields: object) -> openai.types.Completion:
        return client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=N, temperature=0, extra_body={"ignore_eos": True}, **fields)  # fmt: skip

    full = complete().choices[0].text
    cut = len(full) // 2
    while cut < len(full) - 3 and not full[cut : cut + 3].strip():  # a stop string with something visible in it
        cut += 1
    stop = full[cut : cut + 3]
    want = full[: full.index(stop)]
    assert stop.strip() and len(full) > len(want) + len(stop)
    for stops in (stop, ["never in this text ☃", stop]):
        r = complete(stop=stops)
        assert (r.choices[0].text, r.choices[0].finish_reason) == (want, "stop"), (full, stop)
    streamed = complete(stop=[stop], stream=True)
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks) == want
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_top_k_1_and_a_tiny_top_p_are_greedy_at_temperature_1(client, greedy):
    assert token_ids(client, temperature=1.0, extra={"top_k": 1}) == greedy
    assert token_ids(client, temperature=1.0, top_p=1e-6) == greedy
    assert token_ids(client, temperature=1.0, top_p=1e-6, seed=3) == greedy  # a seed changes nothing there


def test_a_seed_repeats_its_sample_and_other_seeds_differ(client, greedy):
    first = token_ids(client, temperature=1.0, seed=1)
    assert token_ids(client, temperature=1.0, seed=1) == first
    others = {tuple(token_ids(client, temperature=1.0, seed=s)) for s in (2, 3, 4)}
    # 16 tokens at temperature 1: all three matching seed 1's sample by chance is not a real possibility.
    assert others - {tuple(first)}, "every seed sampled the same tokens"
    assert {tuple(first), *others} != {tuple(greedy)}, "temperature 1 sampled the greedy answer every time"


def test_a_stream_is_openai_sse_on_the_wire(server):
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 4, "temperature": 0, "ignore_eos": True, "stream": True}
    with http(server) as c, c.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    frames = raw.split("\n\n")
    assert frames[-2:] == ["data: [DONE]", ""] and "\r" not in raw, raw  # LF line ends, as OpenAI and vLLM
    events = frames[:-2]
    assert events and all(f.startswith("data: {") and "\n" not in f for f in events), raw  # one line each, no pings
    chunks = [json.loads(f[len("data: ") :]) for f in events]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
