"""Recorder: keeps the saved history in step with the app's ChatSessions, by comparing, never by hooks.

The app calls `sync(session, handle)` after each pump of a chat (with the handle that was live before it). The
recorder compares the session's messages with what it has saved: new turns are appended (an answer with the
finished handle's outcome, reasoning and timings), turns that changed (a regenerated answer) are replaced, and a
settings change is stored. A session reaches the database with its first message. All writes go through the
writer thread; this class only builds records.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from nanovllm_tui.app.history.records import COMPLETE, STOPPED, MessageRecord, SessionRecord, status_of, title_from
from nanovllm_tui.app.history.writer import HistoryWriter
from nanovllm_tui.app.metrics import decode_rate
from nanovllm_tui.app.session import ChatSession, SessionSettings


@dataclass(slots=True)
class Tracked:
    """What has been saved of one open chat."""

    uid: str
    title: str | None = None  # None until the session is in the database
    saved: list[tuple[str, str]] = field(default_factory=list)  # (role, content) of the saved in-context turns
    seqs: list[int] = field(default_factory=list)  # their seq numbers
    next_seq: int = 0
    settings: SessionSettings | None = None  # as last saved
    handle: Any = None  # the last live request handle seen, until its answer is saved


def answer_record(handle: Any, seq: int) -> MessageRecord:
    """A finished answer with its outcome, reasoning and timings."""
    m = handle.metrics
    return MessageRecord(
        role="assistant",
        content=handle.text,
        reasoning=handle.reasoning,
        status=status_of(handle.finish_reason),
        finish_reason=handle.finish_reason,
        error=handle.error,
        prompt_tokens=m.num_prompt_tokens,
        cached_tokens=m.num_cached_tokens,
        completion_tokens=m.num_generation_tokens,
        ttft=m.time_to_first_token,
        tok_s=decode_rate(m),
        seq=seq,
        created_at=time.time(),
    )


class Recorder:
    """Saves the app's open chats. `writer` None: history is off and every call is a no-op."""

    def __init__(self, writer: HistoryWriter | None, model: str):
        self.writer = writer
        self.model = model
        self.tracked: dict[int, Tracked] = {}  # by ChatSession.number

    def track(self, session: ChatSession, record: SessionRecord | None = None) -> None:
        """Start saving a chat: a new one, or one reopened from `record` (whose messages it already holds)."""
        if record is None:
            self.tracked[session.number] = Tracked(uuid.uuid4().hex)
            return
        t = Tracked(record.uid, record.title, settings=record.settings.copy())
        for m in record.messages:
            if m.in_context:
                t.saved.append((m.role, m.content))
                t.seqs.append(m.seq)
        t.next_seq = max((m.seq for m in record.messages), default=-1) + 1
        self.tracked[session.number] = t
        self._write(lambda store: store.set_open(t.uid, True))

    def close(self, session: ChatSession) -> None:
        """The chat's tab was closed: save what is left and stop reopening it."""
        self.sync(session)
        t = self.tracked.pop(session.number, None)
        if t is not None and t.title is not None:
            self._write(lambda store: store.set_open(t.uid, False))

    def save_partial(self, session: ChatSession) -> None:
        """Save the answer still streaming (its chat or the app is closing) with its text so far, as stopped."""
        t, h = self.tracked.get(session.number), session.handle
        if t is None or h is None or h.finished or self.writer is None:
            return
        self.sync(session)  # the question first
        h.drain()
        record = answer_record(h, t.next_seq)
        record.status, record.finish_reason = STOPPED, "abort"
        t.handle = None
        self._append(session, t, record)

    def title(self, number: int) -> str | None:
        t = self.tracked.get(number)
        return None if t is None else t.title

    def renamed(self, uid: str, title: str) -> None:
        """Another part of the app renamed a saved session: keep the tab's title in step."""
        for t in self.tracked.values():
            if t.uid == uid:
                t.title = title

    def uid(self, number: int) -> str | None:
        t = self.tracked.get(number)
        return None if t is None else t.uid

    def sync(self, session: ChatSession, handle: Any = None) -> None:
        """Save what changed in `session` since the last sync; `handle`: the request live before this pump."""
        t = self.tracked.get(session.number)
        if t is None or self.writer is None:
            return
        live = session.handle or handle
        if live is not None:
            t.handle = live
        msgs = session.messages
        common = 0
        for (role, content), m in zip(t.saved, msgs):
            if m.get("role") != role or m.get("content") != content:
                break
            common += 1
        if common < len(t.saved):
            after = t.seqs[common - 1] if common else -1
            self._write(lambda store: store.truncate(t.uid, after))
            del t.saved[common:], t.seqs[common:]
        for m in msgs[common:]:
            self._append(session, t, self._record(t, m["role"], m["content"]))
        self._save_failed(session, t)
        if t.title is not None and session.settings != t.settings:
            t.settings = session.settings.copy()
            record = self._session_record(session, t)
            self._write(lambda store: store.update_settings(t.uid, record))

    def _record(self, t: Tracked, role: str, content: str) -> MessageRecord:
        """A turn to save; an answer that matches the finished handle gets its outcome and timings."""
        h = t.handle
        if role == "assistant" and h is not None and h.finished and h.text == content:
            t.handle = None
            return answer_record(h, t.next_seq)
        return MessageRecord(role=role, content=content, status=COMPLETE, seq=t.next_seq, created_at=time.time())

    def _save_failed(self, session: ChatSession, t: Tracked) -> None:
        """An answer that failed before any text is not in the session's turns; save it marked as failed."""
        h = t.handle
        if h is not None and h.finished and h is not session.handle and h.finish_reason == "error" and not h.text:
            t.handle = None
            self._append(session, t, answer_record(h, t.next_seq))

    def _append(self, session: ChatSession, t: Tracked, record: MessageRecord) -> None:
        if t.title is None:  # the first message brings the session into the database
            first = next((m["content"] for m in session.messages if m["role"] == "user"), "")
            t.title = title_from(first) or session.title
            t.settings = session.settings.copy()
            created = self._session_record(session, t)
            self._write(lambda store: store.create_session(created))
        t.next_seq += 1
        if record.in_context:
            t.saved.append((record.role, record.content))
            t.seqs.append(record.seq)
        self._write(lambda store: store.add_message(t.uid, record))

    def _session_record(self, session: ChatSession, t: Tracked) -> SessionRecord:
        now = time.time()
        settings = t.settings.copy() if t.settings is not None else session.settings.copy()
        return SessionRecord(t.uid, t.title or session.title, now, now, self.model, settings, is_open=True)

    def _write(self, fn: Any) -> None:
        if self.writer is not None:
            self.writer.submit(fn)
