"""A chat session's pane: message list (user text, streamed Markdown answers with folded reasoning) and the prompt box."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.css.query import NoMatches
from textual.message import Message
from textual.widgets import Collapsible, Markdown, Static, TextArea
from textual.widgets.markdown import MarkdownStream

from nanovllm_tui.app.metrics import metrics_line
from nanovllm_tui.app.session import ChatSession
from nanovllm_tui.app.text import inert

if TYPE_CHECKING:
    from nanovllm_tui.remote.protocol import ChatBackend


class PromptInput(TextArea):
    """The prompt box: Enter sends, ctrl+j (or shift+enter where the terminal reports it) inserts a newline."""

    # The app's keys that TextArea also binds (ctrl+w delete word, ctrl+y redo) would lose to the focused
    # prompt; priority bindings here forward them, so every key in the footer works while typing (and they
    # show: the focused widget's binding of a key is the one the footer lists).
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "send", "Send"),
        Binding("ctrl+j", "newline", "Newline", show=False),
        Binding("ctrl+w", "app.close_session", "Close chat", priority=True),
        Binding("ctrl+y", "app.copy", "Copy", priority=True),
    ]

    class Submitted(Message):
        def __init__(self, prompt: PromptInput, text: str):
            super().__init__()
            self.prompt = prompt
            self.text = text

    async def _on_key(self, event: events.Key) -> None:
        # Runs before TextArea._on_key; preventing the default stops TextArea from inserting the newline.
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            self.action_send()
        elif event.key in ("ctrl+j", "shift+enter"):
            event.stop()
            event.prevent_default()
            self.action_newline()

    async def _on_paste(self, event: events.Paste) -> None:
        # Runs before TextArea._on_paste: a paste arrives as one insert at the cursor, line endings as
        # newlines, tabs kept, other control bytes (escape sequences) as visible symbols, never live.
        event.stop()
        event.prevent_default()
        if not self.read_only:
            self.replace(inert(event.text.replace("\r\n", "\n").replace("\r", "\n")), *self.selection)

    def action_send(self) -> None:
        self.post_message(self.Submitted(self, self.text))

    def action_newline(self) -> None:
        self.insert("\n")


class UserMessage(Static):
    """A prompt as plain text (never markup, never terminal control)."""

    def __init__(self, text: str):
        super().__init__(Text(inert(text)), classes="message user")
        self.border_title = "you"
        self.text = text


class AnswerView(Vertical):
    """An assistant answer: reasoning folded away, the answer streamed as Markdown, then a metrics line."""

    def __init__(self, request_id: str):
        super().__init__(classes="message assistant")
        self.border_title = "assistant"
        self.request_id = request_id
        self.text = ""
        self.reasoning = ""
        self._pending = ""  # answer text not yet handed to the Markdown stream
        self._reasoning_dirty = False
        self._stream: MarkdownStream | None = None
        self.done = False
        self.progress = ""  # "prefilling 1,024 / 3,661 tokens" until the first token

    def compose(self) -> ComposeResult:
        with Collapsible(title="reasoning", collapsed=True, classes="reasoning"):
            yield Static(classes="reasoning-text")
        yield Markdown(classes="answer")
        yield Static(Text("…", style="dim"), classes="metrics")

    def on_mount(self) -> None:
        self.query_one(".reasoning", Collapsible).display = False
        self._stream = Markdown.get_stream(self.query_one(".answer", Markdown))

    def add(self, text: str, reasoning: str) -> None:
        """Buffer deltas; `flush` shows them (only visible panes flush, so hidden tabs cost nothing)."""
        if text:
            self.text += text
            self._pending += inert(text)
        if reasoning:
            self.reasoning += reasoning
            self._reasoning_dirty = True

    def show_progress(self, computed: int, total: int) -> None:
        """A long prompt's prefill progress, in the metrics line until the first token arrives."""
        progress = f"prefilling {computed:,} / {total:,} tokens" if computed < total and not self.text else ""
        if progress != self.progress:
            self.progress = progress
            self.query_one(".metrics", Static).update(Text(progress or "…", style="dim"))

    async def flush(self) -> None:
        if self.progress and (self.text or self.reasoning):
            self.show_progress(0, 0)
        if self._reasoning_dirty:
            self._reasoning_dirty = False
            fold = self.query_one(".reasoning", Collapsible)
            fold.display = True
            fold.title = f"reasoning ({len(self.reasoning):,} chars)"
            self.query_one(".reasoning-text", Static).update(Text(inert(self.reasoning)))
        if self._pending and self._stream is not None:
            pending, self._pending = self._pending, ""
            await self._stream.write(pending)

    async def finish(self, line: str, error: str | None) -> None:
        """Stop streaming, then one full update so nothing a fragment boundary may have split is lost."""
        self._pending = ""
        self._reasoning_dirty = bool(self.reasoning)
        try:
            await self.flush()
            if self._stream is not None:
                stream, self._stream = self._stream, None
                await stream.stop()
            await self.query_one(".answer", Markdown).update(inert(self.text))
            metrics = Text(line, style="dim")
            if error:
                metrics.append(("\n" if line else "") + f"error: {inert(error)}", style="bold red")
            self.query_one(".metrics", Static).update(metrics)
        except NoMatches:  # removed while it finished (its chat closed, or regenerated): nothing left to draw
            pass
        self.done = True


class ChatPane(Vertical):
    """One session's conversation; talks to the engine only through the service (submit / drain / abort)."""

    def __init__(self, session: ChatSession, service: ChatBackend, **kwargs):
        super().__init__(**kwargs)
        self.session = session
        self.service = service
        self.answer: AnswerView | None = None

    def compose(self) -> ComposeResult:
        yield VerticalScroll(classes="messages")
        yield PromptInput(
            id=f"prompt-{self.session.number}", classes="prompt", show_line_numbers=False, soft_wrap=True, compact=True
        )
        yield Static(classes="chat-status")

    def on_mount(self) -> None:
        self.query_one(".messages", VerticalScroll).anchor()
        self._status()

    @property
    def prompt(self) -> PromptInput:
        return self.query_one(PromptInput)

    def _status(self, note: str = "") -> None:
        s = self.session.settings
        state = "generating… esc stops" if self.session.busy else "enter sends · ctrl+j newline"
        text = Text(
            f"{state}  ·  T={s.temperature:g} top_p={s.top_p:g} top_k={s.top_k} max={s.max_tokens}", style="dim"
        )
        if note:
            text.append(f"  {note}", style="bold red")
        for status in self.query(".chat-status").results(Static):  # absent while the app shuts down
            status.update(text)

    async def on_prompt_input_submitted(self, event: PromptInput.Submitted) -> None:
        event.stop()
        text = event.text.strip()
        if not text:
            return
        if self.session.busy:
            self._status("still answering; esc stops it")
            return
        event.prompt.clear()
        await self.send(text)

    async def send(self, text: str) -> None:
        """Add a user turn and start the answer."""
        self.session.messages.append({"role": "user", "content": text})
        await self.query_one(".messages").mount(UserMessage(text))
        await self._submit()

    async def _submit(self) -> None:
        session = self.session
        try:
            handle = self.service.submit(
                session.prompt_messages(),
                session.settings.sampling_params(),
                request_id=session.next_request_id(),
                enable_thinking=session.settings.thinking,
            )
        except (ValueError, RuntimeError) as exc:
            self._status(inert(str(exc)))
            return
        session.handle = handle
        self.answer = AnswerView(handle.request_id)
        await self.query_one(".messages").mount(self.answer)
        self._status()

    async def pump(self, visible: bool) -> bool:
        """Drain the live request's deltas (called on the app's timer); True while an answer is streaming."""
        handle, answer = self.session.handle, self.answer
        if handle is None or answer is None:
            return False
        if not answer.is_mounted:  # submit() is still mounting it (a tick can land in that await): next tick
            return True
        for out in handle.drain():
            answer.add(out.text, out.reasoning)
        if handle.finished:
            # History first, then mark idle (before any await, so a concurrent pump can't finish it twice).
            if handle.text or handle.finish_reason != "error":
                self.session.messages.append({"role": "assistant", "content": handle.text})
            self.session.handle = None
            # A request that failed before its first token ends with the error line alone.
            failed_at_once = handle.error is not None and not handle.text
            line = "" if failed_at_once else metrics_line(handle.metrics, handle.finish_reason)
            await answer.finish(line, handle.error)
            self._status()
            return False
        if visible:
            window = getattr(self.app, "window", None)  # the local engine's steps (None when attached)
            step = window.latest if window is not None else None
            for request_id, computed, total in step.prefilling if step is not None else ():
                if request_id == handle.request_id:
                    answer.show_progress(computed, total)
            await answer.flush()
        return True

    def stop(self) -> bool:
        """Abort the answer being generated (its KV blocks are freed by the engine's next step)."""
        return self.session.handle is not None and self.service.abort(self.session.handle.request_id)

    async def regenerate(self) -> None:
        """Drop the last answer and ask again with the same history."""
        if self.session.busy:
            self._status("still answering; esc stops it first")
            return
        msgs = self.session.messages
        if msgs and msgs[-1]["role"] == "assistant":
            msgs.pop()
        if not msgs or msgs[-1]["role"] != "user":
            self._status("nothing to regenerate yet")
            return
        answers = self.query(AnswerView)
        if answers:
            await answers.last().remove()
        await self._submit()

    def last_answer(self) -> str | None:
        for msg in reversed(self.session.messages):
            if msg["role"] == "assistant":
                return msg["content"]
        return None

    def refresh_status(self) -> None:
        self._status()
