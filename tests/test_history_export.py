"""Exports of a saved chat, compared whole: Markdown with every sampling setting in its header, and the OpenAI
chat-completions body with the same settings (penalties and min_p included, neutral values too)."""

from __future__ import annotations

import json

import pytest

from nanovllm_tui.app.history.export import render, settings_line, to_openai, write_exports
from nanovllm_tui.app.history.records import MessageRecord, SessionRecord
from nanovllm_tui.app.session import SessionSettings

T0 = 1_780_000_000.0  # 2026-05-28 20:26:40 UTC


def test_exports(tmp_path):
    settings = SessionSettings(
        system_prompt="Be brief.",
        temperature=0.0,
        max_tokens=32,
        seed=1,
        thinking=False,
        repetition_penalty=1.15,
        presence_penalty=0.5,
        frequency_penalty=-0.25,
        min_p=0.05,
    )
    record = SessionRecord("u", "Sort a list?", T0, T0 + 60, "tiny", settings, id=7)
    record.messages = [
        MessageRecord("user", "Sort a list?", seq=0),
        MessageRecord("assistant", "sorted(x)", "think", "complete", "stop", None, 12, 0, 4, 0.05, 40.0, seq=1),
        MessageRecord("user", "Again", seq=2),
        MessageRecord("assistant", "", status="failed", finish_reason="error", error="boom", seq=3),
    ]
    md_path, json_path = write_exports(record, tmp_path)
    assert md_path.name == "chat-7-sort-a-list.md" and json_path.name == "chat-7-sort-a-list.json"
    assert md_path.read_text() == (
        "# Sort a list?\n\n- session: 7\n- model: tiny\n"
        "- created: 2026-05-28 20:26 UTC · updated: 2026-05-28 20:27 UTC\n"
        "- settings: temperature 0 · top_p 0.95 · top_k -1 · min_p 0.05 · repetition_penalty 1.15 · "
        "presence_penalty 0.5 · frequency_penalty -0.25 · max_tokens 32 · seed 1 · thinking off\n\n"
        "## System\n\nBe brief.\n\n## User\n\nSort a list?\n\n"
        "## Assistant\n\n<details>\n<summary>Reasoning</summary>\n\nthink\n\n</details>\n\nsorted(x)\n\n"
        "*TTFT 50 ms · 40.0 tok/s · 4 tokens · 0/12 prompt tokens cached*\n\n"
        "## User\n\nAgain\n\n## Assistant\n\n*failed: boom*\n"
    )
    assert json.loads(json_path.read_text()) == {
        "model": "tiny",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Sort a list?"},
            {"role": "assistant", "content": "sorted(x)", "reasoning_content": "think"},
            {"role": "user", "content": "Again"},
        ],
        "temperature": 0.0,
        "top_p": 0.95,
        "min_p": 0.05,
        "repetition_penalty": 1.15,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.25,
        "max_tokens": 32,
        "seed": 1,
        "chat_template_kwargs": {"enable_thinking": False},
    }
    with pytest.raises(ValueError, match="unknown export format 'txt'"):
        render(record, "txt")


def test_neutral_penalties_are_written_too():
    record = SessionRecord("u", "t", T0, T0, "tiny", SessionSettings(system_prompt="", top_k=5))
    assert settings_line(record) == (
        "temperature 0.7 · top_p 0.95 · top_k 5 · min_p 0 · repetition_penalty 1 · presence_penalty 0 · "
        "frequency_penalty 0 · max_tokens 256 · seed none · thinking on"
    )
    body = to_openai(record)
    assert {k: body[k] for k in ("min_p", "repetition_penalty", "presence_penalty", "frequency_penalty")} == {
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
    }
    assert body["top_k"] == 5 and "seed" not in body and "chat_template_kwargs" not in body
