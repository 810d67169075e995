"""Split streamed text into answer text and reasoning (what a model writes between <think> and </think>).

Works on deltas: a tag split across deltas ("<thi" + "nk>") is withheld until it can be decided,
so no delta ever shows part of a tag. Content deltas + reasoning deltas, with the tags put back,
equal the raw text exactly.
"""

from __future__ import annotations

from nanovllm_tui.engine.text.chat import THINK_CLOSE, THINK_OPEN


def _partial_tag_len(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    for k in range(min(len(text), len(tag) - 1), 0, -1):
        if text.endswith(tag[:k]):
            return k
    return 0


class ReasoningSplitter:
    """Feed text deltas, get (content, reasoning) deltas; call flush() at the end of the request."""

    def __init__(self, in_reasoning: bool = False, open_tag: str = THINK_OPEN, close_tag: str = THINK_CLOSE):
        self.in_reasoning = in_reasoning
        self.open_tag, self.close_tag = open_tag, close_tag
        self._held = ""  # a possible partial tag not yet decided

    def feed(self, text: str) -> tuple[str, str]:
        """Consume a text delta; returns (content delta, reasoning delta)."""
        buf = self._held + text
        content: list[str] = []
        reasoning: list[str] = []
        while True:
            tag = self.close_tag if self.in_reasoning else self.open_tag
            i = buf.find(tag)
            if i == -1:
                break
            (reasoning if self.in_reasoning else content).append(buf[:i])
            buf = buf[i + len(tag) :]
            self.in_reasoning = not self.in_reasoning
        k = _partial_tag_len(buf, self.close_tag if self.in_reasoning else self.open_tag)
        self._held = buf[len(buf) - k :] if k else ""
        (reasoning if self.in_reasoning else content).append(buf[: len(buf) - k])
        return "".join(content), "".join(reasoning)

    def flush(self) -> tuple[str, str]:
        """At the end: a withheld partial tag was just text after all."""
        held, self._held = self._held, ""
        return ("", held) if self.in_reasoning else (held, "")
