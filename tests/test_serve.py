"""`nanovllm-tui serve --headless` in a subprocess on 127.0.0.1, driven by the official openai client and raw httpx:
chat and completions (streamed and not), usage, greedy output against LLM.generate, bad requests, the API key and
the headless log lines. tests/test_serve_load.py reuses ServerProcess and the fixtures for load, disconnects and
/metrics."""

from __future__ import annotations

import contextlib
import pathlib
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

REPO = pathlib.Path(__file__).resolve().parent.parent
API_KEY = "test-key"
MODEL = "demo"
ENGINE_FLAGS = [
    "--device", "cpu", "--max-model-len", "512", "--block-size", "16", "--num-kvcache-blocks", "192",
    "--torch-threads", "1",
]  # fmt: skip


class ServerProcess:
    """The serve command in a subprocess; its stdout lines are collected on a thread and waited on with deadlines."""

    def __init__(self, *args: str, env: dict[str, str] | None = None):
        cmd = [sys.executable, "-m", "nanovllm_tui.app.cli", "serve", "--headless", "--port", "0", *args]
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env
        )
        self.lines: list[str] = []
        self._new: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self._new.put(line)

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        """The first output line (seen so far or to come) matching `pattern`."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for line in self.lines[seen:]:
                if m := re.search(pattern, line):
                    return m
            seen = len(self.lines)
            left = deadline - time.monotonic()
            if left <= 0 or (self.proc.poll() is not None and self._new.empty() and seen == len(self.lines)):
                raise AssertionError(f"no line matching {pattern!r}; output so far:\n" + "\n".join(self.lines))
            with contextlib.suppress(queue.Empty):
                self._new.get(timeout=min(left, 1.0))

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError("serve did not stop within 30 s of SIGTERM") from None
        return self.proc.returncode


@pytest.fixture(scope="module")
def server(demo_model_dir):
    srv = ServerProcess(
        "--model", str(demo_model_dir), "--served-model-name", MODEL, "--api-key", API_KEY, *ENGINE_FLAGS
    )
    try:
        srv.url = srv.wait_for(r"listening on (http://127\.0\.0\.1:\d+)", 120).group(1)  # type: ignore[attr-defined]
        srv.wait_for(r"engine ready", 300)
    except BaseException:
        srv.stop()
        raise
    yield srv
    assert srv.stop() == 0, "\n".join(srv.lines)  # SIGTERM is a clean stop


@pytest.fixture
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, timeout=120, max_retries=0)


def http(server) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120)


def scrape(server) -> dict[tuple[str, tuple], float]:
    """/metrics as {(sample name, sorted labels): value}."""
    text = httpx.get(server.url + "/metrics", timeout=30).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(metrics: dict, name: str, **labels: str) -> float:
    want = {"model_name": MODEL, "engine": "0", **labels}
    return metrics[(name, tuple(sorted(want.items())))]


def test_health_models_and_the_listening_line(server):
    assert httpx.get(server.url + "/health", timeout=30).status_code == 200
    with http(server) as c:
        models = c.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == [MODEL]
    assert models["data"][0]["max_model_len"] == 512


def test_chat_not_streamed_and_streamed(client):
    messages = [{"role": "user", "content": "Name a colour."}]
    full = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, temperature=0)
    choice = full.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert full.usage.completion_tokens <= 12 and full.usage.prompt_tokens > 5
    assert full.usage.total_tokens == full.usage.prompt_tokens + full.usage.completion_tokens
    assert choice.finish_reason in ("stop", "length")

    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=messages,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content  # greedy: the same answer streamed
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == full.usage.model_dump()


def test_completions_from_text_and_token_ids(client, demo_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(demo_model_dir)
    prompt = "The capital of France is"
    ids = tok.encode(prompt, add_special_tokens=False)
    by_text = client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=0, extra_body={"ignore_eos": True})  # fmt: skip
    by_ids = client.completions.create(model=MODEL, prompt=ids, max_tokens=8, temperature=0, extra_body={"ignore_eos": True})  # fmt: skip
    assert by_text.choices[0].text == by_ids.choices[0].text and by_text.choices[0].text
    for r in (by_text, by_ids):
        assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(ids), 8)
        assert r.choices[0].finish_reason == "length"
    streamed = client.completions.create(model=MODEL, prompt=ids, max_tokens=8, temperature=0, stream=True, extra_body={"ignore_eos": True})  # fmt: skip
    assert "".join(c.choices[0].text for c in streamed) == by_ids.choices[0].text


@pytest.mark.slow
def test_greedy_output_equals_llm_generate(client, demo_model_dir):
    from nanovllm_tui import LLM, SamplingParams

    prompts = [[1, 504, 3458, 282, 4649, 314], [9519, 28, 957, 359, 346, 47]]
    llm = LLM(str(demo_model_dir), device="cpu", max_model_len=512, kvcache_block_size=16, num_kvcache_blocks=64)
    try:
        expected = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=16), use_tqdm=False)
    finally:
        llm.shutdown()
    for ids, want in zip(prompts, expected):
        got = client.completions.create(
            model=MODEL, prompt=ids, max_tokens=16, temperature=0, extra_body={"return_token_ids": True}
        )
        assert got.choices[0].model_extra["token_ids"] == want["token_ids"]
        assert got.choices[0].text == want["text"]


def test_penalties_and_min_p_reach_the_sampler(client):
    prompt = "one, two, three, one, two, three, one, two,"
    extra = {"ignore_eos": True, "return_token_ids": True}

    def ids(**kw: float) -> list[int]:
        got = client.completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=0, extra_body={**extra, **kw})  # fmt: skip
        return got.choices[0].model_extra["token_ids"]

    plain = ids()
    assert ids(min_p=0.5) == plain  # min_p never removes the most likely token
    assert ids(repetition_penalty=1.5) != plain
    assert ids(presence_penalty=2.0, frequency_penalty=1.0) != plain


def test_bad_requests_get_openai_errors_and_the_server_survives(server, client):
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    cases = [
        ("/v1/chat/completions", b"{not json", 400, None),
        ("/v1/chat/completions", {**chat, "model": "gpt-4"}, 400, "model"),
        ("/v1/chat/completions", {**chat, "temperature": -1}, 400, "temperature"),
        ("/v1/chat/completions", {**chat, "n": 2}, 400, "n"),
        ("/v1/chat/completions", {**chat, "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools"),
        ("/v1/chat/completions", {**chat, "logprobs": True}, 400, "logprobs"),
        ("/v1/chat/completions", {"model": MODEL}, 400, "messages"),
        ("/v1/completions", {"model": MODEL, "prompt": [5] * 600}, 400, "prompt"),
        ("/v1/completions", {"model": MODEL, "prompt": [5] * 500, "max_tokens": 100}, 400, "prompt"),
        ("/v1/completions", {"model": MODEL, "prompt": "hi", "top_p": 0}, 400, "top_p"),
        ("/v1/completions", {"model": MODEL, "prompt": "hi", "presence_penalty": 3}, 400, None),
        ("/v1/completions", {"model": MODEL, "prompt": "hi", "repetition_penalty": 0}, 400, None),
    ]
    with http(server) as c:
        for path, body, status, param in cases:
            r = c.post(path, content=body, headers={"Content-Type": "application/json"}) if isinstance(body, bytes) else c.post(path, json=body)  # fmt: skip
            assert r.status_code == status, (body, r.text)
            error = r.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["message"], r.text
            assert error["param"] == param, (body, error)
            assert "\n" not in error["message"]
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = httpx.post(server.url + "/v1/chat/completions", json=chat, headers=headers, timeout=30)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=chat["messages"], n=2)
    ok = client.chat.completions.create(model=MODEL, messages=chat["messages"], max_tokens=4)
    assert ok.usage.completion_tokens >= 1


def test_headless_log_has_one_line_per_request(server, client):
    r = client.completions.create(model=MODEL, prompt="One two", max_tokens=3, temperature=0, extra_body={"ignore_eos": True})  # fmt: skip
    m = server.wait_for(rf"^{re.escape(r.id)} completion status=length prompt_tokens=(\d+) output_tokens=3 ttft=([\d.]+)s e2e=([\d.]+)s$", 10)  # fmt: skip
    assert int(m.group(1)) == r.usage.prompt_tokens
    assert float(m.group(2)) <= float(m.group(3))
