"""create_app: the FastAPI app of `nanovllm-tui serve` — OpenAI's /v1/chat/completions, /v1/completions and
/v1/models, plus /health and vLLM's Prometheus /metrics. /v1 routes need the API key when one is set."""

from __future__ import annotations

import secrets

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Receive, Scope, Send

from nanovllm_tui.server.chat import create_chat_completion
from nanovllm_tui.server.completions import create_completion
from nanovllm_tui.server.errors import APIError, error_body, install_error_handlers
from nanovllm_tui.server.schemas import ChatCompletionRequest, CompletionRequest
from nanovllm_tui.server.state import ServerState


class ApiKeyMiddleware:
    """401 with OpenAI's body for a /v1 request without `Authorization: Bearer <key>` (before its body is read)."""

    def __init__(self, app: ASGIApp, api_key: str):
        self.app = app
        self._expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not secrets.compare_digest(given, self._expected):
                body = error_body(
                    401,
                    "missing or wrong API key; send the server's --api-key as 'Authorization: Bearer <key>'",
                    code="invalid_api_key",
                )
                await JSONResponse(body, status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(state: ServerState) -> FastAPI:
    """The ASGI app over `state` (which may still be waiting for its engine: requests then get 503)."""
    app = FastAPI(title="nanovllm-tui", docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)
    if state.api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=state.api_key)

    @app.get("/health")
    async def health() -> Response:
        state.ready_service()  # 503 while starting or after the engine died
        return Response(status_code=200)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        _, info = state.ready_service()
        card = {
            "id": state.served_model_name,
            "object": "model",
            "created": state.created,
            "owned_by": "nanovllm-tui",
            "root": info.model,
            "parent": None,
            "max_model_len": info.max_model_len,
        }
        return JSONResponse({"object": "list", "data": [card]})

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await create_chat_completion(state, body, request)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await create_completion(state, body, request)

    return app


__all__ = ["APIError", "create_app"]
