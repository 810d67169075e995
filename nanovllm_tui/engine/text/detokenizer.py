"""Incremental detokenization with stop strings: text deltas that never split a character or leak a stop string."""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas.

    Decodes a short window of tokens (prefix_offset..) so the cost per token is constant, and holds
    back text that ends in a replacement character (an incomplete multi-byte character) or that
    could still be the start of a stop string. The concatenated deltas equal `text` exactly.
    """

    def __init__(self, tokenizer: Any, stop: list[str] | None = None, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.stop = stop or []
        self.max_stop_len = max((len(s) for s in self.stop), default=0)
        # Sorted stops answer "is this a proper prefix of some stop?" by bisection in O(total length) memory;
        # a set of every prefix would cost the sum of squared lengths (GBs for a few long stop strings).
        self._sorted_stops = sorted(set(self.stop))
        self._first_chars = {s[0] for s in self.stop}
        self._stops_by_last: dict[str, list[str]] = {}
        for s in self._sorted_stops:
            self._stops_by_last.setdefault(s[-1], []).append(s)
        self.skip_special_tokens = skip_special_tokens
        # transformers' decode wraps the Rust tokenizer's at ~4x the cost per call; with no clean-up pass to
        # apply both give the same text, and we decode twice per token per request.
        raw = getattr(tokenizer, "_tokenizer", None)
        clean_up = getattr(tokenizer, "clean_up_tokenization_spaces", True)
        self._raw_decode = raw.decode if raw is not None and hasattr(raw, "decode") and clean_up is False else None
        self.token_ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0
        self.text = ""  # all decoded text so far (stop string trimmed once found)
        self.emitted = 0  # how much of text has been handed out as deltas
        self.stopped = False  # a stop string was found

    def _decode(self, ids: list[int]) -> str:
        if self._raw_decode is not None:
            return self._raw_decode(ids, skip_special_tokens=self.skip_special_tokens)
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def add_tokens(self, new_ids: list[int]) -> None:
        """Append tokens; updates `text`, and `stopped` if a stop string now appears."""
        if self.stopped:
            return
        self.token_ids.extend(new_ids)
        prefix_text = self._decode(self.token_ids[self.prefix_offset : self.read_offset])
        full_text = self._decode(self.token_ids[self.prefix_offset :])
        if len(full_text) > len(prefix_text) and not full_text.endswith(REPLACEMENT):
            old_len = len(self.text)
            self.text += full_text[len(prefix_text) :]
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.token_ids)
            if self.stop:
                self._check_stop(old_len)

    def _check_stop(self, old_len: int) -> None:
        best = -1
        # A stop that newly appears ends in the new text, so only stops ending in one of its characters
        # can match, and each rescans just its own length back: thousands of stops stay cheap per token.
        for c in set(self.text[old_len:]):
            for s in self._stops_by_last.get(c, ()):
                i = self.text.find(s, max(0, old_len - len(s) + 1))
                if i != -1 and (best == -1 or i < best):
                    best = i
        if best != -1:
            self.text = self.text[:best]
            self.stopped = True

    def flush(self) -> None:
        """At the end of a request: take whatever text a final decode gives (even a lone partial character)."""
        if self.stopped:
            return
        tail = self._decode(self.token_ids[self.prefix_offset :])
        prefix_text = self._decode(self.token_ids[self.prefix_offset : self.read_offset])
        if len(tail) > len(prefix_text):
            old_len = len(self.text)
            self.text += tail[len(prefix_text) :]
            self.read_offset = len(self.token_ids)
            if self.stop:
                self._check_stop(old_len)

    def _held_back(self) -> int:
        """Length of the longest suffix of text that is a proper prefix of some stop string."""
        if not self.stop or self.stopped:
            return 0
        tail = self.text[-(self.max_stop_len - 1) :] if self.max_stop_len > 1 else ""
        stops = self._sorted_stops
        for i in range(len(tail)):  # longest suffix first
            if tail[i] not in self._first_chars:
                continue
            suffix = tail[i:]
            j = bisect_left(stops, suffix)
            # stops[j] >= suffix; an exact match is a whole stop (already found), so look one further.
            for s in stops[j : j + 2]:
                if len(s) > len(suffix) and s.startswith(suffix):
                    return len(suffix)
        return 0

    def take_delta(self, final: bool = False) -> str:
        """Text not yet handed out; when not final, withhold what might begin a stop string."""
        end = len(self.text) if final else len(self.text) - self._held_back()
        if end <= self.emitted:
            return ""
        delta = self.text[self.emitted : end]
        self.emitted = end
        return delta
