"""BackgroundServer: uvicorn serving an ASGI app on a thread, so the main thread stays free for the Textual watch
view (or for waiting on signals). The socket is bound here, before uvicorn starts, so `--port 0` has its real
port at once; stop() sets uvicorn's should_exit and returns within its timeout."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn

GRACEFUL_SHUTDOWN_S = 2  # open streams get this long to end before uvicorn cancels them


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0 picks a free one); OSError if it cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


class BackgroundServer:
    """One uvicorn.Server on one bound socket, run on a daemon thread."""

    def __init__(self, app: Any, host: str, port: int, log_level: str = "warning"):
        self.sock = bind(host, port)
        self.host = host
        self.port: int = self.sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            log_level=log_level,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="nanovllm-http", daemon=True)
        self.error: BaseException | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        except BaseException as exc:  # reported by start() / is_alive; the thread must not die silently
            self.error = exc

    def start(self, timeout: float = 10.0) -> None:
        """Start serving; returns once uvicorn accepts connections (RuntimeError if it did not within `timeout`)."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop(1.0)
                raise RuntimeError(f"the HTTP server did not start on {self.url} ({self.error or 'timed out'})")
            time.sleep(0.01)

    @property
    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask uvicorn to exit; force it after `timeout`; closes the socket."""
        self.server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.server.force_exit = True
            self._thread.join(2.0)
        self.sock.close()
