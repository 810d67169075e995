"""RemoteClient: the HTTP calls attach mode makes (models, /metrics, /tokenize, streamed completions), each with
a timeout, each failure turned into one RemoteError subclass with a one-line message.

One httpx.Client (a connection pool) is shared by the poller and every stream; httpx's sync client is thread-safe.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from nanovllm_tui.remote.errors import (
    BadResponse,
    RemoteError,
    RequestRejected,
    ServerTimeout,
    ServerUnreachable,
    Unauthorized,
)
from nanovllm_tui.remote.stream import EventStream

DEFAULT_TIMEOUT = 5.0  # seconds for every short call (models, metrics, tokenize) and to connect
DEFAULT_STREAM_TIMEOUT = 300.0  # seconds a stream may go without a byte: a long prefill on a busy server


def normalize_base_url(url: str) -> str:
    """'http(s)://host[:port][/prefix]' without a trailing '/' or '/v1'; ValueError naming the problem otherwise."""
    text = url.strip()
    try:
        parsed = httpx.URL(text)
    except (httpx.InvalidURL, TypeError) as e:
        raise ValueError(f"bad server URL {url!r}: {e}; expected e.g. http://127.0.0.1:8000") from None
    if parsed.scheme not in ("http", "https"):
        raise ValueError(f"bad server URL {url!r}: it must start with http:// or https:// (e.g. http://127.0.0.1:8000)")
    if not parsed.host:
        raise ValueError(f"bad server URL {url!r}: no host in it (e.g. http://127.0.0.1:8000)")
    base = text.rstrip("/")
    if base.endswith("/v1"):
        base = base[: -len("/v1")]
    return base


@dataclass(frozen=True, slots=True)
class ModelCard:
    """One entry of /v1/models."""

    id: str
    max_model_len: int | None = None  # vLLM adds it; plain OpenAI servers don't


class RemoteClient:
    """Blocking HTTP calls to one server; call from worker threads, never from the UI thread."""

    limits = httpx.Limits(max_connections=100, max_keepalive_connections=20)  # the pool's (httpx's defaults)

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        stream_timeout: float = DEFAULT_STREAM_TIMEOUT,
    ):
        if timeout <= 0 or stream_timeout <= 0:
            raise ValueError(f"timeouts must be > 0 seconds (got {timeout}, {stream_timeout})")
        self.base_url = normalize_base_url(url)
        self.has_api_key = bool(api_key)
        self.timeout = timeout
        self.stream_timeout = stream_timeout
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=httpx.Timeout(timeout), limits=self.limits
        )

    def close(self) -> None:
        self._http.close()

    # -- calls -------------------------------------------------------------------------------------
    def models(self) -> list[ModelCard]:
        """GET /v1/models; BadResponse unless it is OpenAI's list shape."""
        body = self._get_json("/v1/models")
        data = body.get("data")
        if not isinstance(data, list) or not all(isinstance(m, dict) and isinstance(m.get("id"), str) for m in data):
            raise BadResponse(f"bad response from {self.base_url}/v1/models: no list of models with ids in it")
        cards = []
        for m in data:
            max_len = m.get("max_model_len")
            cards.append(ModelCard(m["id"], max_len if isinstance(max_len, int) else None))
        return cards

    def metrics_text(self) -> str:
        """GET /metrics as text (parse it with remote.metrics.parse_metrics)."""
        with self._errors("/metrics", self.timeout):
            resp = self._http.get("/metrics")
        self._check(resp, "/metrics")
        return resp.text

    def tokenize(self, model: str, text: str) -> list[int]:
        """POST /tokenize (a vLLM extension): the model's token ids of `text`, no special tokens added."""
        body = self._post_json("/tokenize", {"model": model, "prompt": text, "add_special_tokens": False})
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise BadResponse(f"bad response from {self.base_url}/tokenize: no list of token ids in it")
        return tokens

    def stream(self, path: str, body: dict[str, Any]) -> EventStream:
        """POST `body` (with stream=True) and return its open SSE stream; the caller must close() it."""
        timeout = httpx.Timeout(self.timeout, read=self.stream_timeout)
        request = self._http.build_request("POST", path, json={**body, "stream": True}, timeout=timeout)
        with self._errors(path, self.stream_timeout):
            resp = self._http.send(request, stream=True)
        kind = resp.headers.get("content-type", "")
        if resp.status_code != 200 or not kind.startswith("text/event-stream"):
            try:
                with self._errors(path, self.timeout):
                    resp.read()  # the error body says why (vLLM: {"message": ...})
            finally:
                resp.close()
            self._check(resp, path)
            raise BadResponse(
                f"bad response from {self.base_url}{path}: {kind or 'no content-type'}, not an event stream"
                f" (starts {_excerpt(resp.text)})"
            )
        return EventStream(resp, f"{self.base_url}{path}", lambda: self._errors(path, self.stream_timeout))

    # -- helpers -----------------------------------------------------------------------------------
    def _get_json(self, path: str) -> dict[str, Any]:
        with self._errors(path, self.timeout):
            resp = self._http.get(path)
        return self._json(resp, path)

    def _post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._errors(path, self.timeout):
            resp = self._http.post(path, json=body)
        return self._json(resp, path)

    def _json(self, resp: httpx.Response, path: str) -> dict[str, Any]:
        self._check(resp, path)
        try:
            body = resp.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BadResponse(
                f"bad response from {self.base_url}{path}: not JSON (starts {_excerpt(resp.text)})"
            ) from None
        if not isinstance(body, dict):
            raise BadResponse(f"bad response from {self.base_url}{path}: JSON but not an object")
        return body

    def _check(self, resp: httpx.Response, path: str) -> None:
        """Raise the RemoteError a non-2xx status means."""
        url = f"{self.base_url}{path}"
        code = resp.status_code
        if code in (401, 403):
            fix = "check the key passed with --api-key" if self.has_api_key else "pass the server's key with --api-key"
            raise Unauthorized(f"{code} {resp.reason_phrase} from {url}: {fix}")
        if code >= 500:  # a restarting server or its proxy: worth retrying
            raise ServerUnreachable(f"{url} answered {code} {resp.reason_phrase}{_error_detail(resp)}")
        if not 200 <= code < 300:
            raise RequestRejected(f"{url} answered {code} {resp.reason_phrase}{_error_detail(resp)}")

    @contextmanager
    def _errors(self, path: str, timeout: float) -> Iterator[None]:
        """Turn httpx's transport exceptions into RemoteError subclasses with one-line messages."""
        url = f"{self.base_url}{path}"
        try:
            yield
        except httpx.ConnectTimeout:
            raise ServerUnreachable(f"connecting to {self.base_url} timed out after {self.timeout:g} s") from None
        except httpx.TimeoutException:
            raise ServerTimeout(f"{url} did not answer within {timeout:g} s") from None
        except (httpx.ConnectError, httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError) as e:
            raise ServerUnreachable(f"{url}: {_reason(e)}") from None
        except httpx.HTTPError as e:
            raise RemoteError(f"{url}: {_reason(e)}") from None


def _reason(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _excerpt(text: str, n: int = 40) -> str:
    return repr(text[:n] + ("…" if len(text) > n else ""))


def _error_detail(resp: httpx.Response) -> str:
    """': <message>' from an OpenAI/vLLM error body, or '' when there is none."""
    try:
        body = resp.json()
    except Exception:
        return ""
    if isinstance(body, dict):
        err = body.get("error", body)
        msg = err.get("message") if isinstance(err, dict) else err
        if isinstance(msg, str) and msg:
            return f": {msg.splitlines()[0][:200]}"
    return ""
