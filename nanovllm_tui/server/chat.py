"""POST /v1/chat/completions: OpenAI's chat completion object, or its chunks as server-sent events. Reasoning
(text inside <think>…</think>, for models whose chat template has it) is `reasoning_content`, as vLLM returns it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from sse_starlette import ServerSentEvent

from nanovllm_tui.engine.text.chat import render_chat
from nanovllm_tui.server.generate import Submitted, error_event, finish_reason, raise_if_failed, submit
from nanovllm_tui.server.schemas import ChatCompletionRequest
from nanovllm_tui.server.state import ServerState
from nanovllm_tui.server.stream import SSEResponse, done_event, json_event


async def create_chat_completion(state: ServerState, body: ChatCompletionRequest, request: Request) -> Response:
    messages = body.chat_messages()
    enable_thinking = body.enable_thinking()
    sub = await submit(state, body, "chat", lambda tokenizer: render_chat(tokenizer, messages, enable_thinking))
    if body.stream:
        return SSEResponse(_events(state, body, sub), sub.stream.abort)
    await sub.stream.final(request)
    raise_if_failed(sub.handle)
    return JSONResponse(_completion(state, body, sub))


def _completion(state: ServerState, body: ChatCompletionRequest, sub: Submitted) -> dict[str, Any]:
    handle = sub.handle
    message: dict[str, Any] = {
        "role": "assistant",
        "content": handle.text,
        "reasoning_content": handle.reasoning or None,
    }
    choice: dict[str, Any] = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": finish_reason(handle.finish_reason),
    }
    if body.return_token_ids:
        choice["token_ids"] = list(handle.token_ids)
    return {
        "id": sub.request_id,
        "object": "chat.completion",
        "created": sub.created,
        "model": state.served_model_name,
        "choices": [choice],
        "usage": sub.usage(),
    }


async def _events(state: ServerState, body: ChatCompletionRequest, sub: Submitted) -> AsyncIterator[ServerSentEvent]:
    """The chunks: the role first, then content / reasoning_content deltas, the finish reason, usage if asked."""
    usage = body.include_usage
    base: dict[str, Any] = {
        "id": sub.request_id,
        "object": "chat.completion.chunk",
        "created": sub.created,
        "model": state.served_model_name,
    }

    def chunk(delta: dict[str, Any], reason: str | None = None, token_ids: list[int] | None = None) -> ServerSentEvent:
        choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
        if token_ids is not None:
            choice["token_ids"] = token_ids
        return json_event({**base, "choices": [choice], **({"usage": None} if usage else {})})

    yield chunk({"role": "assistant", "content": ""})
    async for out in sub.stream.outputs():
        if out.finished and out.finish_reason == "error":
            yield json_event(error_event(sub.handle))
            break
        delta: dict[str, Any] = {}
        if out.reasoning:
            delta["reasoning_content"] = out.reasoning
        if out.text:
            delta["content"] = out.text
        ids = list(out.token_ids) if body.return_token_ids else None
        if out.finished:
            yield chunk(delta, finish_reason(out.finish_reason), ids)
        elif delta or ids:
            yield chunk(delta, None, ids)
    else:
        if usage:
            yield json_event({**base, "choices": [], "usage": sub.usage()})
    yield done_event()
