"""Banner: one line above the chats while the app's backend reports trouble (a remote server unreachable or
restarting, its key rejected, the engine gone); hidden otherwise, so it costs no space when all is well."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from nanovllm_tui.app.text import inert


class Banner(Static):
    """Shows `show(line)`'s line, or nothing (hidden) for None; redraws only when the line changes."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.line: str | None = None
        self.display = False

    def show(self, line: str | None) -> None:
        if line != self.line:
            self.line = line
            self.update(Text(f"⚠ {inert(line)}") if line else "")
            self.display = line is not None
