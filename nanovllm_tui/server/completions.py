"""POST /v1/completions: a prompt string or prompt token ids in, OpenAI's text_completion object (or its chunks
as server-sent events) out. With vLLM's `return_token_ids`, each choice also carries the completion's token ids."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from sse_starlette import ServerSentEvent

from nanovllm_tui.server.generate import Submitted, error_event, finish_reason, raise_if_failed, submit
from nanovllm_tui.server.schemas import CompletionRequest
from nanovllm_tui.server.state import ServerState
from nanovllm_tui.server.stream import SSEResponse, done_event, json_event


async def create_completion(state: ServerState, body: CompletionRequest, request: Request) -> Response:
    prompt = body.single_prompt()
    sub = await submit(state, body, "completion", lambda _tokenizer: prompt)
    if body.stream:
        return SSEResponse(_events(state, body, sub), sub.stream.abort)
    await sub.stream.final(request)
    raise_if_failed(sub.handle)
    return JSONResponse(_completion(state, body, sub))


def _choice(text: str, reason: str | None, token_ids: list[int] | None) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
    if token_ids is not None:
        choice["token_ids"] = token_ids
    return choice


def _completion(state: ServerState, body: CompletionRequest, sub: Submitted) -> dict[str, Any]:
    handle = sub.handle
    ids = list(handle.token_ids) if body.return_token_ids else None
    return {
        "id": sub.request_id,
        "object": "text_completion",
        "created": sub.created,
        "model": state.served_model_name,
        "choices": [_choice(handle.text, finish_reason(handle.finish_reason), ids)],
        "usage": sub.usage(),
    }


async def _events(state: ServerState, body: CompletionRequest, sub: Submitted) -> AsyncIterator[ServerSentEvent]:
    """One chunk per delta (the last with the finish reason), then usage if asked, then [DONE]."""
    usage = body.include_usage
    base: dict[str, Any] = {
        "id": sub.request_id,
        "object": "text_completion",
        "created": sub.created,
        "model": state.served_model_name,
    }
    extra = {"usage": None} if usage else {}
    async for out in sub.stream.outputs():
        if out.finished and out.finish_reason == "error":
            yield json_event(error_event(sub.handle))
            break
        ids = list(out.token_ids) if body.return_token_ids else None
        reason = finish_reason(out.finish_reason) if out.finished else None
        if out.text or out.finished or ids:
            yield json_event({**base, "choices": [_choice(out.text, reason, ids)], **extra})
    else:
        if usage:
            yield json_event({**base, "choices": [], "usage": sub.usage()})
    yield done_event()
