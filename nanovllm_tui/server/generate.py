"""Submitting one request for either endpoint: its id, its prompt (rendered off the event loop), max_tokens (vLLM's
default: what max_model_len leaves after the prompt), the engine's own checks as 400s, and the usage numbers."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio.to_thread

from nanovllm_tui.engine.serving.protocol import EngineInfo, Service
from nanovllm_tui.engine.serving.request_handle import RequestHandle
from nanovllm_tui.server.errors import APIError, bad_request, error_body
from nanovllm_tui.server.schemas import SamplingFields
from nanovllm_tui.server.state import ServerState
from nanovllm_tui.server.stream import RequestStream
from nanovllm_tui.server.tracker import RequestRecord

ID_PREFIX = {"chat": "chatcmpl-", "completion": "cmpl-"}
FINISH_REASONS = {"stop": "stop", "length": "length", "abort": "abort"}  # "error" never reaches a choice


@dataclass(slots=True)
class Submitted:
    """A request the engine has accepted: its API id, creation time and output stream."""

    request_id: str
    created: int
    stream: RequestStream

    @property
    def handle(self) -> RequestHandle:
        return self.stream.handle

    def usage(self) -> dict[str, int]:
        prompt = self.handle.metrics.num_prompt_tokens
        completion = len(self.handle.token_ids)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def resolve_max_tokens(requested: int | None, num_prompt_tokens: int, info: EngineInfo, param: str) -> int:
    """max_tokens as asked, or all that max_model_len leaves after the prompt (400 if it leaves nothing)."""
    if requested is not None:
        return requested
    room = info.max_model_len - num_prompt_tokens
    if room < 1:
        raise bad_request(
            f"the prompt has {num_prompt_tokens} tokens, which leaves no room for an answer within "
            f"max_model_len={info.max_model_len}; shorten the prompt or start the server with a larger --max-model-len",
            param,
        )
    return room


async def submit(
    state: ServerState,
    body: SamplingFields,
    kind: str,
    build_prompt: Callable[[Any], str | list[int]],
) -> Submitted:
    """Check, build the prompt (given the chat-template tokenizer) and submit it in a worker thread: tokenizing
    and the engine pipe may take a while. Chat answers are split into reasoning and content when the model's
    chat template knows <think> blocks."""
    state.check_model(body.model)
    body.check_supported()
    service, info = state.ready_service()
    tokenizer = state.tokenizer
    request_id = f"{ID_PREFIX[kind]}{uuid.uuid4().hex[:24]}"
    param = "messages" if kind == "chat" else "prompt"
    split_reasoning = info.has_reasoning_template if kind == "chat" else None

    def work() -> RequestHandle:
        prompt = build_prompt(tokenizer)
        return _submit_now(service, info, body, prompt, request_id, split_reasoning, param)

    try:
        handle = await anyio.to_thread.run_sync(work)
    except APIError:
        raise
    except ValueError as exc:  # the engine's checks: the message names the value and the limit
        raise bad_request(one_line(exc), _param_of(exc, param)) from None
    except RuntimeError as exc:  # the service stopped between the check and the submit
        raise APIError(503, f"the engine has stopped ({one_line(exc)}); restart the server") from None
    m = handle.metrics
    state.tracker.start(RequestRecord(request_id, kind, m.arrival_time, m.num_prompt_tokens, stream=body.stream))
    return Submitted(request_id, int(time.time()), RequestStream(handle, state.metrics, state.tracker))


def _submit_now(
    service: Service,
    info: EngineInfo,
    body: SamplingFields,
    prompt: str | list[int],
    request_id: str,
    split_reasoning: bool | None,
    param: str,
) -> RequestHandle:
    requested = body.requested_max_tokens()
    num_prompt = 0
    if requested is None:  # only then is the prompt's length needed before the engine's own check
        num_prompt = len(prompt) if isinstance(prompt, list) else len(service.tokenize(prompt))
    sp = body.sampling_params(resolve_max_tokens(requested, num_prompt, info, param))
    return service.submit(prompt, sp, request_id, split_reasoning=split_reasoning)


def _param_of(exc: ValueError, default: str) -> str | None:
    """The request field an engine ValueError is about, read from its message's leading `name=`."""
    text = str(exc)
    for name in ("temperature", "top_k", "top_p", "max_tokens", "stop_token_ids", "seed", "stop"):
        if text.startswith((f"{name}=", f"{name} ")):
            return name
    return default


def finish_reason(reason: str | None) -> str | None:
    return FINISH_REASONS.get(reason or "", reason)


def failure_message(handle: RequestHandle) -> str:
    return f"the engine failed this request: {' '.join((handle.error or 'unknown error').split())}"


def raise_if_failed(handle: RequestHandle) -> None:
    """A request the engine ended with "error" (a failed step, a dead engine) answers 500."""
    if handle.finish_reason == "error":
        raise APIError(500, failure_message(handle))


def error_event(handle: RequestHandle) -> dict[str, Any]:
    """The body of the last event of a stream whose request the engine ended with "error"."""
    return error_body(500, failure_message(handle))
