"""ServerState: what the HTTP handlers share — the engine service once it is up (503 before that and after it
dies), the served model's name, the API key, the chat-template tokenizer, the metrics and the request tracker."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from nanovllm_tui.server.errors import APIError
from nanovllm_tui.server.metrics import ServerMetrics
from nanovllm_tui.server.tracker import RequestTracker

if TYPE_CHECKING:
    from nanovllm_tui.engine.serving.protocol import EngineInfo, Service
    from nanovllm_tui.engine.stats import EngineStats


class ServerState:
    """Starts empty ("starting"); `attach` hands it a running service, `fail` a start-up error."""

    def __init__(self, served_model_name: str, api_key: str | None = None):
        if api_key is not None and not api_key:
            raise ValueError("--api-key is empty; pass a non-empty key or leave the flag out")
        self.served_model_name = served_model_name
        self.api_key = api_key
        self.created = int(time.time())
        self.service: Service | None = None
        self.info: EngineInfo | None = None
        self.tokenizer: Any = None
        self.start_error: str | None = None
        self.metrics = ServerMetrics(served_model_name, self.engine_stats)
        self.tracker = RequestTracker()
        self._unsubscribe: Any = None
        self._lock = threading.Lock()

    def attach(self, service: Service, tokenizer: Any = None) -> None:
        """Serve `service` from now on. Loads the model's tokenizer (for chat templates) unless one is given."""
        info = service.engine_info()
        if tokenizer is None:
            from nanovllm_tui.engine.text.tokenizer import load_tokenizer

            tokenizer = load_tokenizer(info.model)
        unsubscribe = service.subscribe(self.metrics.on_step)
        with self._lock:
            self.info, self.tokenizer, self._unsubscribe = info, tokenizer, unsubscribe
            self.service = service  # last: a handler that sees the service sees its info and tokenizer

    def detach(self) -> None:
        """Stop feeding metrics from the service (before it shuts down)."""
        with self._lock:
            unsubscribe, self._unsubscribe = self._unsubscribe, None
        if unsubscribe is not None:
            unsubscribe()

    def fail(self, message: str) -> None:
        """The engine could not start: every request gets 503 with this message."""
        self.start_error = message

    def engine_stats(self) -> EngineStats | None:
        service = self.service
        return None if service is None else service.stats()

    @property
    def status(self) -> str:
        """ "starting", "ready" or "dead" (start-up failed, or the engine stopped)."""
        service = self.service
        if service is None:
            return "dead" if self.start_error else "starting"
        return "ready" if service.is_running and service.fatal_error is None else "dead"

    def ready_service(self) -> tuple[Service, EngineInfo]:
        """The service and its info, or a 503 saying why there is none."""
        service, info = self.service, self.info
        if service is None or info is None:
            if self.start_error:
                raise APIError(503, f"the engine failed to start ({self.start_error}); fix it and restart the server")
            raise APIError(503, "the engine is still starting; retry when GET /health answers 200")
        if not service.is_running or service.fatal_error is not None:
            why = service.fatal_error or "it was shut down"
            raise APIError(503, f"the engine has stopped ({why}); restart the server")
        return service, info

    def check_model(self, model: str | None) -> None:
        """400 unless `model` is omitted or the served name."""
        if model is not None and model != self.served_model_name:
            raise APIError(
                400,
                f"the model {model!r} is not served here; use {self.served_model_name!r} (GET /v1/models lists it)",
                param="model",
                code="model_not_found",
            )
