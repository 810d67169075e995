"""RemoteService: a ChatBackend over any vLLM-compatible server, plus a MetricsPoller for the dashboard.

Each submit() opens one streamed HTTP request on its own daemon thread, which feeds the RequestHandle as
chunks arrive; abort() finishes the handle at once and shuts the stream's connection down, which is how an
OpenAI-API client stops a generation (the server aborts a request whose client has gone).
Token ids are not part of the OpenAI stream, so handles carry text only; metrics.token_times has one entry per
chunk (vLLM sends one token per chunk unless it is behind).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from nanovllm_tui.engine.outputs import RequestOutput
from nanovllm_tui.engine.sampling_params import SamplingParams
from nanovllm_tui.engine.serving.protocol import Prompt
from nanovllm_tui.engine.serving.request_handle import RequestHandle, RequestMetrics
from nanovllm_tui.remote.client import ModelCard, RemoteClient
from nanovllm_tui.remote.errors import RemoteError
from nanovllm_tui.remote.openai_api import ChunkDelta, read_chunk, request_body
from nanovllm_tui.remote.poller import MAX_BACKOFF, UNAUTHORIZED, Listener, MetricsPoller, PollStatus
from nanovllm_tui.remote.snapshot import RemoteSnapshot
from nanovllm_tui.remote.stream import EventStream

AskModel = Callable[[list[ModelCard]], ModelCard]  # asks the user to pick one of several models


@dataclass(frozen=True, slots=True)
class RemoteInfo:
    """What server the app is attached to (the dashboard header)."""

    url: str
    model: str
    max_model_len: int | None
    models: tuple[str, ...]  # every model the server lists


class _Live:
    """One request in flight: its handle, its stream once open, and whether it was aborted."""

    def __init__(self, handle: RequestHandle, split_reasoning: bool):
        self.handle = handle
        self.split_reasoning = split_reasoning
        self.stream: EventStream | None = None
        self.aborted = False


class RemoteService:
    """Chat with a remote server and watch its /metrics; every method may be called from any thread."""

    def __init__(
        self,
        client: RemoteClient,
        model: ModelCard,
        models: list[ModelCard],
        interval: float = 1.0,
        max_backoff: float = MAX_BACKOFF,
    ):
        self.client = client
        self.poller = MetricsPoller(client, interval, max_backoff)
        self._info = RemoteInfo(client.base_url, model.id, model.max_model_len, tuple(m.id for m in models))
        self._lock = threading.Lock()
        self._live: dict[str, _Live] = {}
        self._threads: list[threading.Thread] = []
        self._held: list[threading.Thread] | None = None  # threads of requests submitted inside batch()
        self._ids = itertools.count()
        self._running = True

    @classmethod
    def connect(
        cls,
        url: str,
        api_key: str | None = None,
        model: str | None = None,
        interval: float = 1.0,
        *,
        max_backoff: float = MAX_BACKOFF,
        ask: AskModel | None = None,
        **client_kw: float,
    ) -> RemoteService:
        """Check the server (one /v1/models call), pick the model (`ask` picks one of several if given), start
        polling /metrics (retrying a server that is down after waits that double up to `max_backoff` seconds);
        `client_kw`: RemoteClient's timeouts.

        ValueError for a bad URL, interval or model choice; RemoteError if the server can't be used."""
        if not interval > 0:
            raise ValueError(f"--interval {interval} must be > 0 seconds")
        client = RemoteClient(url, api_key, **client_kw)
        try:
            models = client.models()
            service = cls(client, choose_model(models, model, client.base_url, ask), models, interval, max_backoff)
        except BaseException:
            client.close()
            raise
        service.poller.start()
        return service

    # -- ChatBackend ---------------------------------------------------------------------------------
    def submit(
        self,
        prompt: Prompt,
        sampling_params: SamplingParams | None = None,
        request_id: str | None = None,
        *,
        enable_thinking: bool | None = None,
        split_reasoning: bool | None = None,
    ) -> RequestHandle:
        """Start one streamed request; ValueError for bad input, RuntimeError once shut down."""
        sp = sampling_params if sampling_params is not None else SamplingParams()
        path, body = request_body(prompt, sp, self._info.model, enable_thinking)
        rid = request_id if request_id is not None else f"remote-{next(self._ids)}"
        handle = RequestHandle(rid, RequestMetrics(arrival_time=time.monotonic()), self.abort)
        thread = threading.Thread(target=self._run, args=(rid, path, body), name=f"remote-{rid}", daemon=True)
        with self._lock:
            if not self._running:
                raise RuntimeError("the remote service has been shut down; attach again")
            if rid in self._live:
                raise ValueError(f"request id {rid!r} is already live; pick another")
            self._live[rid] = _Live(handle, split_reasoning is not False)
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
            if self._held is not None:
                self._held.append(thread)
                return handle
        thread.start()
        return handle

    def abort(self, request_id: str) -> bool:
        """Finish a live request with "abort" now and close its stream; False if it is not live."""
        with self._lock:
            live = self._live.pop(request_id, None)
            if live is None or live.handle.done:
                return False
            live.aborted = True
            stream = live.stream
        self._finish(live.handle, "abort")
        if stream is not None:
            stream.close()
        return True

    @property
    def is_running(self) -> bool:
        return self._running

    @property
    def fatal_error(self) -> str | None:
        """A failure that ends attach mode (a rejected API key); a server that is down is not fatal."""
        status = self.poller.status
        return status.message if status.state == UNAUTHORIZED else None

    def shutdown(self, timeout: float = 5.0) -> None:
        """Abort live requests, stop polling, close the connections; returns within about `timeout`."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._running = False
            ids, threads = list(self._live), list(self._threads)
        for rid in ids:
            self.abort(rid)
        self.poller.stop(timeout=max(0.0, deadline - time.monotonic()))
        for t in threads:
            if t.ident is not None:
                t.join(max(0.0, deadline - time.monotonic()))
        self.client.close()

    # -- the rest of Service that makes sense over HTTP ----------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        """The model's token ids of `text` via vLLM's /tokenize; RemoteError if the server has no such route."""
        return self.client.tokenize(self._info.model, text)

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Hold requests submitted inside the block and send them together at its end."""
        with self._lock:
            outer, self._held = self._held is not None, self._held if self._held is not None else []
        try:
            yield
        finally:
            if not outer:
                with self._lock:
                    held, self._held = self._held or [], None
                for t in held:
                    t.start()

    # -- remote only ---------------------------------------------------------------------------------
    def info(self) -> RemoteInfo:
        return self._info

    def snapshot(self) -> RemoteSnapshot | None:
        """The latest poll's figures (None before the first successful poll)."""
        return self.poller.latest

    @property
    def status(self) -> PollStatus:
        """How polling goes; status.message is banner text while the server is unreachable."""
        return self.poller.status

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener(status, snapshot)` after every poll (on the poller thread); returns an unsubscribe."""
        return self.poller.subscribe(listener)

    # -- stream threads ------------------------------------------------------------------------------
    def _run(self, rid: str, path: str, body: dict) -> None:
        """Open the stream, feed the handle chunk by chunk, and finish it (error if the stream breaks off)."""
        with self._lock:
            live = self._live.get(rid)
        if live is None:  # aborted before its thread ran
            return
        reason, error = None, None
        try:
            stream = self.client.stream(path, body)
            with self._lock:
                live.stream = stream
                aborted = live.aborted
            if aborted:
                stream.close()
            for event in stream:
                chunk = read_chunk(event)
                self._deliver(live, chunk)
                reason = chunk.finish_reason or reason
            if reason is None and not live.aborted:
                error = f"the stream from {stream.url} ended before the server finished the request"
        except RemoteError as e:
            error = str(e)
        except Exception as e:  # a bug here must still end the request, or its reader waits forever
            error = f"reading the stream failed: {e!r}"
        with self._lock:
            self._live.pop(rid, None)
        if not live.aborted:
            self._finish(live.handle, "error" if error else reason, error)

    def _deliver(self, live: _Live, chunk: ChunkDelta) -> None:
        m = live.handle.metrics
        if chunk.prompt_tokens is not None:
            m.num_prompt_tokens = chunk.prompt_tokens
        if chunk.cached_tokens is not None:
            m.num_cached_tokens = chunk.cached_tokens
        text, reasoning = chunk.text, chunk.reasoning
        if not live.split_reasoning:
            text, reasoning = reasoning + text, ""
        if not (text or reasoning):
            return
        now = time.monotonic()
        if m.first_token_time is None:
            m.first_token_time = now
        m.token_times.append(now)
        live.handle._put(RequestOutput(live.handle.request_id, text=text, reasoning=reasoning))

    @staticmethod
    def _finish(handle: RequestHandle, reason: str | None, error: str | None = None) -> None:
        handle.metrics.finished_time = time.monotonic()
        handle._put(RequestOutput(handle.request_id, finished=True, finish_reason=reason or "stop", error=error))


def choose_model(models: list[ModelCard], wanted: str | None, url: str, ask: AskModel | None = None) -> ModelCard:
    """The model to chat with: `wanted` if listed, else the only one, else what `ask` picks of several;
    ValueError listing them otherwise (and `ask`'s ValueError when nothing was picked)."""
    ids = ", ".join(m.id for m in models)
    if wanted is not None:
        for m in models:
            if m.id == wanted:
                return m
        raise ValueError(f"{url} does not serve model {wanted!r}; it serves: {ids or 'none'}")
    if len(models) == 1:
        return models[0]
    if not models:
        raise ValueError(f"{url}/v1/models lists no model; is the server still loading?")
    if ask is not None:
        return ask(models)
    raise ValueError(f"{url} serves {len(models)} models; pick one with --model NAME ({ids})")
