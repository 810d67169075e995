"""Real servers on 127.0.0.1 for the attach-mode tests: a scripted vLLM look-alike (http.server in a thread)
serving /metrics from fixture texts, /v1/models, /tokenize and streamed completions; and a hung server that
accepts connections and never answers. They stand in for vLLM, not for the client under test."""

from __future__ import annotations

import contextlib
import json
import pathlib
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DATA = pathlib.Path(__file__).parent / "data"


def fixture(name: str) -> str:
    return (DATA / name).read_text()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ScriptedServer:
    """vLLM's API as far as the client uses it. `metrics` are served in turn (the last one repeats);
    chat answers stream `words` one chunk each `token_delay` seconds, up to max_tokens, or `raw` as it is."""

    def __init__(
        self,
        metrics: list[str] | None = None,
        models: tuple[str, ...] = ("Qwen/Qwen3-0.6B",),
        api_key: str | None = None,
        port: int = 0,
        garbage: bool = False,
        words: tuple[str, ...] = ("Hello", " there", ",", " friend", "."),
        token_delay: float = 0.0,
        tls: ssl.SSLContext | None = None,
        raw: bytes | None = None,
    ):
        self.metrics = list(metrics or [fixture("vllm_metrics.txt")])
        self.models, self.api_key, self.garbage = models, api_key, garbage
        self.words, self.token_delay, self.raw = words, token_delay, raw
        self.metrics_served = 0
        self.requests: list[dict] = []  # bodies of completion requests, in arrival order
        self.disconnected = threading.Event()  # a streaming client went away mid-answer
        self.chunks_sent = 0
        self.lock = threading.Lock()
        self.conns: list[socket.socket] = []  # accepted connections, cut on exit (keep-alive would outlive us)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> ScriptedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)
        with self.lock:
            for conn in self.conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)

    def next_metrics(self) -> str:
        with self.lock:
            text = self.metrics[min(self.metrics_served, len(self.metrics) - 1)]
            self.metrics_served += 1
            return text


class _Handler(BaseHTTPRequestHandler):
    """One request to a ScriptedServer (`scripted` is set per server by _handler)."""

    scripted: ScriptedServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        with self.scripted.lock:
            self.scripted.conns.append(self.connection)

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    def _send(self, code: int, body: str, kind: str = "application/json") -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        if self.scripted.api_key and self.headers.get("Authorization") != f"Bearer {self.scripted.api_key}":
            self._send(401, json.dumps({"error": "Unauthorized"}))
            return False
        return True

    def do_GET(self) -> None:
        if not self._authorized():
            return
        if self.scripted.garbage:
            self._send(200, "<html><body><h1>It works!</h1></body></html>", "text/html")
        elif self.path == "/metrics":
            self._send(200, self.scripted.next_metrics(), "text/plain; version=0.0.4; charset=utf-8")
        elif self.path == "/v1/models":
            cards = [
                {"id": m, "object": "model", "owned_by": "vllm", "max_model_len": 4096} for m in self.scripted.models
            ]
            self._send(200, json.dumps({"object": "list", "data": cards}))
        else:
            self._send(404, json.dumps({"detail": "Not Found"}))

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if not self._authorized():
            return
        if self.scripted.garbage:
            self._send(200, "<html><body><h1>It works!</h1></body></html>", "text/html")
            return
        if self.path == "/tokenize":
            self._send(200, json.dumps({"tokens": [ord(c) for c in body["prompt"]], "count": len(body["prompt"])}))
            return
        if self.path not in ("/v1/chat/completions", "/v1/completions"):
            self._send(404, json.dumps({"detail": "Not Found"}))
            return
        if body.get("max_tokens", 16) > 100_000:
            self._send(400, json.dumps({"object": "error", "message": "max_tokens is too large", "code": 400}))
            return
        with self.scripted.lock:
            self.scripted.requests.append(body)
        self._stream(body, chat=self.path.endswith("chat/completions"))

    def _stream(self, body: dict, chat: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Connection", "close")
        self.end_headers()
        n = body.get("max_tokens", 16)
        try:
            if self.scripted.raw is not None:
                self.wfile.write(self.scripted.raw)
                self.wfile.flush()
                self.close_connection = True
                return
            if chat:
                self._event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
            for i in range(n):
                word = self.scripted.words[i % len(self.scripted.words)]
                last = i == n - 1
                choice = {"index": 0, "delta": {"content": word}} if chat else {"index": 0, "text": word}
                choice["finish_reason"] = "length" if last else None
                self._event({"choices": [choice]})
                with self.scripted.lock:
                    self.scripted.chunks_sent += 1
                time.sleep(self.scripted.token_delay)
            usage = {"prompt_tokens": 7, "completion_tokens": n, "prompt_tokens_details": {"cached_tokens": 4}}
            self._event({"choices": [], "usage": usage})
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except OSError:  # BrokenPipe, ConnectionReset, or TLS EOF: the client has gone
            self.scripted.disconnected.set()
        self.close_connection = True

    def _event(self, obj: dict) -> None:
        self.wfile.write(f"data: {json.dumps(obj)}\n\n".encode())
        self.wfile.flush()


def _handler(server: ScriptedServer) -> type[BaseHTTPRequestHandler]:
    return type("Handler", (_Handler,), {"scripted": server})


class HungServer:
    """Accepts TCP connections and never answers (a wedged process behind a live socket)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def __enter__(self) -> HungServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self.sock.close()
        self.thread.join(5)
        for c in self.conns:
            c.close()
