"""EngineService with chat messages: chat templates (Qwen3's enable_thinking switch, the plain fallback) and
<think>…</think> reasoning split off into reasoning deltas."""

# ruff: noqa: F811 (fixtures imported from test_service are requested by parameter name)
from __future__ import annotations

import random

import torch
from test_service import QWEN3_TEMPLATE, tiny, tiny_dir, tiny_svc  # noqa: F401 (fixtures)

from nanovllm_tui.engine import SamplingParams
from nanovllm_tui.engine.text.chat import render_chat
from nanovllm_tui.engine.text.reasoning import ReasoningSplitter


def test_chat_rendering_thinking_switch_and_fallback(tiny):
    tok = tiny.tokenizer
    msgs = [{"role": "user", "content": "Hi"}]
    on = render_chat(tok, msgs, enable_thinking=True)
    off = render_chat(tok, msgs, enable_thinking=False)
    assert on == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert off == on + "<think>\n\n</think>\n\n"
    tok.chat_template = None
    try:
        assert (
            render_chat(tok, [*msgs, {"role": "assistant", "content": "Yo"}])
            == "user: Hi\n\nassistant: Yo\n\nassistant:"
        )
    finally:
        tok.chat_template = QWEN3_TEMPLATE


def test_reasoning_splitter_any_chunking():
    raw = "<think>\nweigh a<b and c>d\n</think>\n\nAnswer: <thin is not a tag; done."
    rng = random.Random(0)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(raw)), rng.randint(1, 12)))
        chunks = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)])]
        splitter = ReasoningSplitter()
        content, reasoning = [], []
        for c in chunks:
            text, think = splitter.feed(c)
            content.append(text)
            reasoning.append(think)
            assert "<think>" not in text + think and "</think>" not in text + think
            assert not (text + think).endswith(("<", "</", "<t", "</th", "<think", "</think"))
        text, think = splitter.flush()
        content.append(text)
        reasoning.append(think)
        assert "".join(reasoning) == "\nweigh a<b and c>d\n"
        assert "".join(content) == "\n\nAnswer: <thin is not a tag; done."
    # A prompt that ends inside <think> makes the output reasoning from its first token.
    splitter = ReasoningSplitter(in_reasoning=True)
    assert splitter.feed("hmm</th") == ("", "hmm") and splitter.feed("ink>ok") == ("ok", "")


def test_thinking_streams_as_reasoning_deltas(tiny_svc, tiny, monkeypatch):
    """The service splits <think>…</think> out of forced model output whose tags span several tokens."""
    tok = tiny.tokenizer
    think, answer = "\nLet me add: 2+2=4.\n", "\n\nThe answer is 4."
    script = tok.encode(f"<think>{think}</think>{answer}", add_special_tokens=False)
    assert len(tok.encode("<think>", add_special_tokens=False)) > 1  # the tags really span tokens
    forced = iter(script)
    monkeypatch.setattr(
        tiny.model_runner,
        "sample_device",
        lambda logits, inputs: torch.tensor([next(forced) for _ in range(logits.shape[0])]),
    )
    h = tiny_svc.submit(
        [{"role": "user", "content": "2+2?"}],
        SamplingParams(max_tokens=len(script), ignore_eos=True),
        enable_thinking=True,
    )
    deltas = list(h)
    assert h.finish_reason == "length" and h.token_ids == script
    assert h.reasoning == think and h.text == answer
    for d in deltas:
        assert "<" not in d.text + d.reasoning and ">" not in d.text + d.reasoning
    assert sum(bool(d.reasoning) for d in deltas) > 1  # reasoning streamed, not delivered at the end
