"""Request bodies of /v1/chat/completions and /v1/completions (pydantic), the fields we refuse, and their mapping
to SamplingParams. Unknown fields are ignored, as OpenAI's server does with fields it does not use."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from nanovllm_tui.engine.sampling_params import SamplingParams
from nanovllm_tui.server.errors import bad_request


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class SamplingFields(BaseModel):
    """What both endpoints share: the model, sampling, stopping, streaming and vLLM's extensions."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=-1)  # vLLM: 0 or -1 turn it off
    max_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    ignore_eos: bool = False
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    min_p: float | None = None  # vLLM's extension
    logit_bias: dict[str, float] | None = None
    return_token_ids: bool = False  # vLLM: the completion's token ids in each choice (and prompt_token_ids)
    user: str | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def check_supported(self) -> None:
        """400 for what this server does not do (one choice per request, no logit bias)."""
        if self.n != 1:
            raise bad_request(
                f"n={self.n} is not supported; this server returns one choice per request (send n=1, or several requests)",
                "n",
            )
        if self.logit_bias:
            raise bad_request("logit_bias is not supported; leave it out", "logit_bias")

    def sampling_params(self, max_tokens: int) -> SamplingParams:
        """SamplingParams for this request (OpenAI's defaults: temperature 1, top_p 1); 400 for bad values."""
        top_k = -1 if self.top_k in (None, 0) else self.top_k
        try:
            return SamplingParams(
                temperature=1.0 if self.temperature is None else self.temperature,
                top_k=int(top_k) if top_k is not None else -1,
                top_p=1.0 if self.top_p is None else self.top_p,
                max_tokens=max_tokens,
                ignore_eos=self.ignore_eos,
                stop=self.stop,
                stop_token_ids=self.stop_token_ids,
                seed=self.seed,
                repetition_penalty=1.0 if self.repetition_penalty is None else self.repetition_penalty,
                presence_penalty=self.presence_penalty or 0.0,
                frequency_penalty=self.frequency_penalty or 0.0,
                min_p=self.min_p or 0.0,
            )
        except ValueError as exc:
            raise bad_request(str(exc)) from None


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: str | list[TextPart] | None = None
    tool_calls: list[Any] | None = None

    def text(self, index: int) -> str:
        """The content as one string; 400 for images, audio or tool calls."""
        if self.tool_calls or self.role == "tool":
            raise bad_request(
                f"messages[{index}]: tool calls are not supported; send plain user/assistant/system messages",
                f"messages.{index}",
            )
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise bad_request(
                    f"messages[{index}]: content parts of type {part.type!r} are not supported; send text parts only",
                    f"messages.{index}.content",
                )
            parts.append(part.text)
        return "".join(parts)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[Any] | None = None
    tool_choice: Any = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: dict[str, Any] | None = None
    chat_template_kwargs: dict[str, Any] | None = None

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def check_supported(self) -> None:
        super().check_supported()
        if self.tools or self.tool_choice not in (None, "none", "auto"):
            raise bad_request("tools are not supported by this server; send the request without tools", "tools")
        if self.logprobs or self.top_logprobs:
            raise bad_request("logprobs are not supported by this server; leave logprobs out", "logprobs")
        if self.response_format and self.response_format.get("type") not in (None, "text"):
            raise bad_request("only response_format type 'text' is supported", "response_format")

    def chat_messages(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.text(i)} for i, m in enumerate(self.messages)]

    def enable_thinking(self) -> bool | None:
        """chat_template_kwargs.enable_thinking (Qwen3), or None to leave the template's default."""
        value = (self.chat_template_kwargs or {}).get("enable_thinking")
        if value is not None and not isinstance(value, bool):
            raise bad_request(
                "chat_template_kwargs.enable_thinking must be true or false", "chat_template_kwargs.enable_thinking"
            )
        return value


class CompletionRequest(SamplingFields):
    prompt: str | list[int] | list[str] | list[list[int]]
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.logprobs is not None:
            raise bad_request("logprobs are not supported by this server; leave logprobs out", "logprobs")
        if self.echo:
            raise bad_request("echo is not supported by this server; leave it out", "echo")
        if self.best_of not in (None, 1):
            raise bad_request("best_of is not supported; leave it out or send 1", "best_of")
        if self.suffix:
            raise bad_request("suffix is not supported by this server; leave it out", "suffix")

    def single_prompt(self) -> str | list[int]:
        """The one prompt (a string or token ids); 400 for a batch of several."""
        p = self.prompt
        if isinstance(p, str) or not p or isinstance(p[0], int):
            return p  # type: ignore[return-value]  # a string, or a list of ints (pydantic checked)
        if len(p) != 1:
            raise bad_request(
                f"prompt holds {len(p)} prompts; this server takes one prompt per request (send several requests)",
                "prompt",
            )
        return p[0]
