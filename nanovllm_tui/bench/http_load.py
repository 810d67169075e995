"""The online workload against an OpenAI-compatible server: one streamed /v1/completions request per workload
request (token-id prompt, max_tokens, ignore_eos, usage in the stream), sent by the ArrivalDriver at its arrival
time and read on a thread of its own.

Timings are the client's (time.monotonic): TTFT from sending to the first chunk with text, ITL between chunks with
text, end when the stream ends; output tokens are the server's usage count (the chunk count if it sends none), as
vLLM's benchmark_serving measures. The attach client (remote/) does the HTTP, SSE reading and error messages.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from tqdm.auto import tqdm

from nanovllm_tui.bench.arrivals import ArrivalDriver
from nanovllm_tui.bench.online import RequestTiming, summarise_timings
from nanovllm_tui.bench.results import OnlineResult
from nanovllm_tui.bench.workload import BenchRequest
from nanovllm_tui.engine.sampling_params import SamplingParams
from nanovllm_tui.remote.client import ModelCard, RemoteClient
from nanovllm_tui.remote.errors import RemoteError, ServerUnreachable
from nanovllm_tui.remote.openai_api import read_chunk, request_body
from nanovllm_tui.remote.service import choose_model
from nanovllm_tui.remote.stream import EventStream

POLICY = "http"  # the result's label: the server's scheduling policy is its own business
WARMUP_TOKENS = 16


class HttpRequest:
    """One streamed request, read on its own thread from start(); `done` once its stream ended (or failed)."""

    def __init__(self, client: RemoteClient, path: str, body: dict[str, Any], on_done: Callable[[], None]):
        self.path = path
        self.body = body
        self.sent: float | None = None
        self.chunk_times: list[float] = []  # each chunk that carried text
        self.completion_tokens: int | None = None  # the usage chunk's count
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.end: float | None = None
        self._client = client
        self._on_done = on_done
        self._stream: EventStream | None = None
        self._aborted = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-http", daemon=True)

    def start(self) -> None:
        self.sent = time.monotonic()
        self._thread.start()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float) -> bool:
        return self._done.wait(timeout)

    def abort(self) -> None:
        """Close the stream (any thread): the server sees the client leave and aborts the request."""
        # The reader stores the stream before it reads _aborted; we set _aborted before reading the stream: one of
        # us sees the other, so a stream opened around an abort is closed either way.
        self._aborted = True
        stream = self._stream
        if stream is not None:
            stream.close()

    def _run(self) -> None:
        try:
            stream = self._client.stream(self.path, self.body)
            self._stream = stream
            if self._aborted:
                stream.close()
            for event in stream:
                now = time.monotonic()
                chunk = read_chunk(event)
                if chunk.text:
                    self.chunk_times.append(now)
                self.finish_reason = chunk.finish_reason or self.finish_reason
                if chunk.completion_tokens is not None:
                    self.completion_tokens = chunk.completion_tokens
            if self._aborted:
                self.error = "aborted"
            elif self.finish_reason is None:
                self.error = f"the stream from {stream.url} ended before the server finished the request"
        except RemoteError as e:
            self.error = str(e)
        except Exception as e:  # a bug here must still end the request, or the run waits for it forever
            self.error = f"reading the stream failed: {e!r}"
        finally:
            self.end = time.monotonic()
            self._done.set()
            self._on_done()

    @property
    def output_tokens(self) -> int:
        return self.completion_tokens if self.completion_tokens is not None else len(self.chunk_times)

    def timing(self) -> RequestTiming:
        times = self.chunk_times
        ok = self.error is None and self.finish_reason == "length"  # ignore_eos: each runs to its max_tokens
        start = self.sent if self.sent is not None else 0.0
        return RequestTiming(start, times[0] if times else None, times, self.end, self.output_tokens, ok)


@dataclass(frozen=True, slots=True)
class Server:
    """A checked server: its client (a connection pool shared by every request thread) and the model to ask."""

    client: RemoteClient
    model: ModelCard

    def request(
        self, prompt: list[int], max_tokens: int, temperature: float, on_done: Callable[[], None] = lambda: None
    ) -> HttpRequest:
        """A benchmark request (not started): token ids in, max_tokens out whatever the model says (ignore_eos)."""
        sp = SamplingParams(temperature=temperature, max_tokens=max_tokens, ignore_eos=True)
        path, body = request_body(prompt, sp, self.model.id, None)
        return HttpRequest(self.client, path, body, on_done)


class BenchClient(RemoteClient):
    """The attach client with an unbounded pool: one connection per request in flight, kept alive across
    requests, so the pool never makes a request wait (or open a new connection in a closed loop)."""

    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)


def connect(url: str, api_key: str | None, model: str | None) -> Server:
    """Check the server (GET /v1/models) and pick the model; ValueError with one line naming the fix otherwise."""
    client = BenchClient(url, api_key)  # ValueError for a malformed URL
    try:
        return Server(client, choose_model(client.models(), model, client.base_url))
    except ServerUnreachable as e:
        client.close()
        raise ValueError(f"{e}; is the server up? (check --url)") from None
    except (RemoteError, ValueError) as e:
        client.close()
        raise ValueError(str(e)) from None


def warm_up(server: Server, workload: list[BenchRequest], temperature: float, timeout: float = 600.0) -> None:
    """One short request before the timed run (as bench online does); ValueError if the server fails it."""
    req = server.request(list(workload[0].prompt_token_ids[:WARMUP_TOKENS]), WARMUP_TOKENS, temperature)
    req.start()
    if not req.wait(timeout):
        req.abort()
        raise ValueError(f"the warm-up request got no answer within {timeout:g} s")
    if req.error is not None:
        raise ValueError(f"the warm-up request failed: {req.error}")


def run_http(
    server: Server,
    workload: list[BenchRequest],
    arrivals: list[float],
    request_rate: float,
    temperature: float,
    *,
    max_concurrency: int | None = None,
    progress: bool = True,
    timeout: float = 3600.0,
) -> tuple[OnlineResult, list[HttpRequest]]:
    """Send the workload at its arrival times, wait for every stream, summarise; also returns the requests."""
    driver: ArrivalDriver[HttpRequest]

    def submit(i: int) -> HttpRequest:
        r = workload[i]
        req = server.request(list(r.prompt_token_ids), r.max_tokens, temperature, driver.notify_finished)
        req.start()
        return req

    driver = ArrivalDriver(submit, arrivals, max_concurrency=max_concurrency, run_id="bench-serve")
    bar = tqdm(total=len(workload), desc="serve", unit="req", disable=not progress, dynamic_ncols=True)
    cpu = time.process_time()  # every thread of this process: the senders, the readers, this loop
    try:
        driver.start()
        driver.wait(timeout, on_progress=lambda n: bar.update(n - bar.n))
    except BaseException:
        driver.stop()
        raise
    finally:
        bar.close()
    cpu = time.process_time() - cpu
    if driver.submit_error is not None:
        raise RuntimeError(f"could not send a request: {driver.submit_error}")
    result = summarise_timings([r.timing() for r in driver.handles], workload, request_rate, POLICY)
    result.max_concurrency = max_concurrency
    result.client_cpu_seconds = cpu
    return result, driver.handles
