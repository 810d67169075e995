"""A saved session as Markdown (for people) or as an OpenAI chat-completions request body (for programs).

The JSON is `{"model", "messages", "temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty",
"frequency_penalty", "max_tokens"}` plus `top_k` and `seed` when set and `chat_template_kwargs.enable_thinking =
false` when thinking is off (vLLM's names, which `nanovllm-tui serve` takes too); an answer's reasoning goes in
`reasoning_content` as vLLM returns it. Turns that failed before any text are left out of the JSON (they were
never part of the conversation) and shown in the Markdown.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from nanovllm_tui.app.history.records import FAILED, STOPPED, MessageRecord, SessionRecord

FORMATS = {"md": ".md", "json": ".json"}


def when(t: float) -> str:
    """A timestamp as UTC text (exports read the same in every time zone)."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))


def message_line(m: MessageRecord) -> str:
    """An answer's outcome and timings, as the chat's metrics line shows them."""
    parts = []
    if m.ttft is not None:
        parts.append(f"TTFT {m.ttft * 1000:.0f} ms")
    if m.tok_s is not None:
        parts.append(f"{m.tok_s:.1f} tok/s")
    if m.completion_tokens is not None:
        parts.append(f"{m.completion_tokens} tokens")
    if m.prompt_tokens is not None:
        parts.append(f"{m.cached_tokens or 0}/{m.prompt_tokens} prompt tokens cached")
    if m.status == STOPPED:
        parts.append("stopped")
    elif m.status == FAILED:
        parts.append(f"failed: {m.error or 'error'}")
    elif m.finish_reason == "length":
        parts.append("hit max_tokens")
    return " · ".join(parts)


def settings_line(record: SessionRecord) -> str:
    """Every sampling setting of the session, in the settings screen's order, on one line."""
    s = record.settings
    seed = "none" if s.seed is None else str(s.seed)
    return (
        f"temperature {s.temperature:g} · top_p {s.top_p:g} · top_k {s.top_k} · min_p {s.min_p:g} · "
        f"repetition_penalty {s.repetition_penalty:g} · presence_penalty {s.presence_penalty:g} · "
        f"frequency_penalty {s.frequency_penalty:g} · max_tokens {s.max_tokens} · seed {seed} · "
        f"thinking {'on' if s.thinking else 'off'}"
    )


def to_markdown(record: SessionRecord) -> str:
    """The session as a Markdown document: a header with its settings, then one section per turn."""
    out = [f"# {record.title}", ""]
    if record.id is not None:
        out.append(f"- session: {record.id}")
    out += [
        f"- model: {record.model or 'unknown'}",
        f"- created: {when(record.created_at)} · updated: {when(record.updated_at)}",
        f"- settings: {settings_line(record)}",
        "",
    ]
    if record.settings.system_prompt:
        out += ["## System", "", record.settings.system_prompt, ""]
    for m in record.messages:
        out += [f"## {m.role.capitalize()}", ""]
        if m.reasoning:
            out += ["<details>", "<summary>Reasoning</summary>", "", m.reasoning, "", "</details>", ""]
        if m.content:
            out += [m.content, ""]
        line = message_line(m) if m.role == "assistant" else ""
        if line:
            out += [f"*{line}*", ""]
    return "\n".join(out)


def to_openai(record: SessionRecord) -> dict[str, Any]:
    """The session as a chat-completions request body (see the module docstring)."""
    s = record.settings
    messages: list[dict[str, str]] = [{"role": "system", "content": s.system_prompt}] if s.system_prompt else []
    for m in record.messages:
        if not m.in_context:
            continue
        entry = {"role": m.role, "content": m.content}
        if m.role == "assistant" and m.reasoning:
            entry["reasoning_content"] = m.reasoning
        messages.append(entry)
    body: dict[str, Any] = {
        "model": record.model,
        "messages": messages,
        "temperature": s.temperature,
        "top_p": s.top_p,
        # Always written, neutral values too: the file then says what sampled the chat without a reader
        # having to know each server's defaults.
        "min_p": s.min_p,
        "repetition_penalty": s.repetition_penalty,
        "presence_penalty": s.presence_penalty,
        "frequency_penalty": s.frequency_penalty,
        "max_tokens": s.max_tokens,
    }
    if s.top_k != -1:
        body["top_k"] = s.top_k
    if s.seed is not None:
        body["seed"] = s.seed
    if not s.thinking:
        body["chat_template_kwargs"] = {"enable_thinking": False}
    return body


def render(record: SessionRecord, fmt: str) -> str:
    """The export text in `fmt` ("md" or "json"), ending with a newline."""
    if fmt == "md":
        return to_markdown(record).rstrip("\n") + "\n"
    if fmt == "json":
        return json.dumps(to_openai(record), indent=2, ensure_ascii=False) + "\n"
    raise ValueError(f"unknown export format {fmt!r}; use one of: {', '.join(FORMATS)}")


def file_stem(record: SessionRecord) -> str:
    """A file name for the session: chat-<id>-<title words>."""
    slug = re.sub(r"[^a-z0-9]+", "-", record.title.lower()).strip("-")[:40].rstrip("-")
    return "-".join(part for part in ("chat", str(record.id or ""), slug) if part)


def write_exports(record: SessionRecord, directory: Path, formats: tuple[str, ...] = ("md", "json")) -> list[Path]:
    """Write the session in each format into `directory` (replacing an earlier export of it); the paths."""
    paths = []
    for fmt in formats:
        path = directory / (file_stem(record) + FORMATS[fmt])
        path.write_text(render(record, fmt), encoding="utf-8")
        paths.append(path)
    return paths
