"""Showing saved history in a chat pane: its turns as the pane would have drawn them, the system prompt at the top,
and the tab's title. Works through the pane's public pieces (the message list, UserMessage, AnswerView)."""

from __future__ import annotations

from rich.text import Text
from textual.containers import VerticalScroll
from textual.css.query import NoMatches
from textual.widgets import Static, TabbedContent

from nanovllm_tui.app.history.export import message_line
from nanovllm_tui.app.history.records import SessionRecord
from nanovllm_tui.app.text import inert
from nanovllm_tui.app.widgets.chat import AnswerView, ChatPane, UserMessage

TAB_TITLE_CHARS = 24


class SystemPromptView(Static):
    """The session's system prompt, at the top of its chat (hidden when there is none)."""

    def __init__(self, prompt: str):
        super().__init__(classes="message system-prompt")
        self.border_title = "system prompt"
        self.prompt = prompt

    def on_mount(self) -> None:
        self.show(self.prompt)

    def show(self, prompt: str) -> None:
        self.prompt = prompt
        self.display = bool(prompt)
        self.update(Text(inert(prompt), style="italic"))


async def show_system_prompt(pane: ChatPane) -> None:
    """Put the session's system prompt at the top of the chat, or bring the one shown up to date."""
    prompt = pane.session.settings.system_prompt
    views = pane.query(SystemPromptView)
    if views:
        view = views.first()
        if view.prompt != prompt:
            view.show(prompt)
        return
    messages = pane.query_one(".messages", VerticalScroll)
    await messages.mount(SystemPromptView(prompt), before=0 if messages.children else None)


async def show_record(pane: ChatPane, record: SessionRecord) -> None:
    """Draw a saved session's turns in its (new, empty) pane: answers finished, with their metrics lines."""
    messages = pane.query_one(".messages", VerticalScroll)
    widgets: list[UserMessage | AnswerView] = []
    answers: list[tuple[AnswerView, str]] = []
    for m in record.messages:
        if m.role == "user":
            widgets.append(UserMessage(m.content))
            continue
        answer = AnswerView(f"saved-{record.id}-{m.seq}")
        answer.text, answer.reasoning = m.content, m.reasoning
        widgets.append(answer)
        answers.append((answer, message_line(m)))  # the line names a failure and its error
    if widgets:
        await messages.mount_all(widgets)
    for answer, line in answers:
        await answer.finish(line, None)
    messages.scroll_end(animate=False)


def set_tab_title(tabs: TabbedContent, pane_id: str, title: str) -> None:
    """Show `title` (shortened, never read as markup) on the pane's tab."""
    short = title if len(title) <= TAB_TITLE_CHARS else title[: TAB_TITLE_CHARS - 1].rstrip() + "…"
    try:
        tab = tabs.get_tab(pane_id)
    except NoMatches:  # the tab is being added or removed right now
        return
    if tab.label_text != short:
        tab.label = Text(inert(short))
