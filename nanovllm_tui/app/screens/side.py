"""SideScreen: a full screen beside the chats (the dashboard, the benchmark). Esc goes back to the chats, not to
the screen below; a printable key that no widget here takes goes back too, into the prompt, so nothing typed on
the wrong screen is lost."""

from __future__ import annotations

from typing import ClassVar, Protocol, runtime_checkable

from textual import events
from textual.binding import Binding, BindingType
from textual.screen import Screen


@runtime_checkable
class ChatHost(Protocol):
    """The app around the screen: it owns the chats."""

    def back_to_chat(self, typed: str = "") -> None:
        """Close the screens above the chats; `typed` goes into the active chat's prompt."""
        ...


class SideScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "back_to_chat", "Back to chat")]

    @property
    def chat_host(self) -> ChatHost:
        app = self.app
        if not isinstance(app, ChatHost):
            raise TypeError(f"{type(self).__name__} needs an app with back_to_chat (NanoVllmApp)")
        return app

    def action_back_to_chat(self) -> None:
        """Back to the chats, not to the screen below (the benchmark may have been opened from the dashboard)."""
        self.chat_host.back_to_chat()

    def on_key(self, event: events.Key) -> None:
        # Keys reach the screen only when the focused widget let them through (a form's Input keeps its own).
        if event.is_printable and event.character:
            event.stop()
            self.chat_host.back_to_chat(event.character)
