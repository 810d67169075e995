"""The app's keys in one place: its bindings, its command-palette entries and the help screen that lists them."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

APP_BINDINGS: list[BindingType] = [
    Binding("escape", "stop", "Stop"),
    Binding("ctrl+r", "regenerate", "Regenerate"),
    Binding("ctrl+y", "copy", "Copy", priority=True),  # before the prompt's redo, which also wants ctrl+y
    Binding("ctrl+n", "new_session", "New chat"),
    Binding("ctrl+w", "close_session", "Close chat"),
    Binding("ctrl+tab", "next_session", "Next chat", show=False),
    Binding("ctrl+shift+tab", "prev_session", "Prev chat", show=False),
    # ctrl+tab and alt+N never reach the app in tmux and many terminals; these do.
    Binding("ctrl+pagedown,f10", "next_session", "Next chat", show=False),
    Binding("ctrl+pageup,f9", "prev_session", "Prev chat", show=False),
    *[Binding(f"alt+{i}", f"switch_session({i})", f"Chat {i}", show=False) for i in range(1, 10)],
    Binding("f1", "help", "Help"),
    Binding("f2", "settings", "Settings"),
    Binding("f3", "dashboard", "Dashboard"),
    Binding("f4", "toggle_policy", "Policy"),
    Binding("f5", "benchmark", "Bench"),
    Binding("ctrl+o", "sessions", "Chats"),
    Binding("ctrl+s", "export", "Export"),
    Binding("f8", "copy_message", "Copy message", show=False),
]

# The command palette: (title, help, the app action it runs).
PALETTE: list[tuple[str, str, str]] = [
    ("New chat", "Open a new chat session (ctrl+n)", "new_session"),
    ("Close chat", "Close the current chat session (ctrl+w)", "close_session"),
    ("Next chat", "Switch to the next chat (ctrl+pagedown, f10)", "next_session"),
    ("Previous chat", "Switch to the previous chat (ctrl+pageup, f9)", "prev_session"),
    ("Stop answer", "Abort the answer being generated (esc)", "stop"),
    ("Regenerate", "Ask again for the last answer (ctrl+r)", "regenerate"),
    ("Copy answer", "Copy the last answer to the clipboard (ctrl+y)", "copy"),
    ("Copy a message", "Pick a message of this chat and copy it (f8)", "copy_message"),
    ("Saved chats", "Search, open, rename or delete saved chats (ctrl+o)", "sessions"),
    ("Export chat", "Write it as Markdown and OpenAI JSON into the current dir (ctrl+s)", "export"),
    ("Session settings", "System prompt and sampling of this chat (f2)", "settings"),
    ("Dashboard", "Full-screen scheduler dashboard (f3)", "dashboard"),
    ("Policy: mixed", "Schedule running requests first, chunk prefills (vLLM V1)", "set_policy('mixed')"),
    ("Policy: prefill_first", "Schedule waiting prefills before decodes (nano-vllm)", "set_policy('prefill_first')"),
    ("Benchmark", "Run a workload through the engine (f5)", "benchmark"),
    ("Help", "Keys and what the dashboard shows (f1)", "help"),
]

HELP = """\
# nanovllm-tui

Chat in several sessions at once; the dashboard shows how the engine batches them.

| key | action |
|---|---|
| enter | send the prompt |
| ctrl+j | newline in the prompt |
| esc | stop the answer being generated (its KV blocks free) |
| ctrl+r | regenerate the last answer |
| ctrl+y | copy the last answer to the clipboard |
| f8 | pick a message of this chat and copy it |
| ctrl+o | saved chats: search, open, rename, delete |
| ctrl+s | export this chat as Markdown and OpenAI JSON (into the working directory) |
| ctrl+n / ctrl+w | new chat / close chat |
| ctrl+pagedown / ctrl+pageup, f10 / f9 | next / previous chat (also ctrl+tab / ctrl+shift+tab) |
| alt+1..9 | chat by number (where the terminal sends alt) |
| f2 | session settings (system prompt, sampling, thinking) |
| f3 | full-screen dashboard |
| f4 | switch scheduling policy (mixed / prefill_first) |
| f5 | benchmark screen |
| f1 | this help |
| ctrl+p | command palette (every action, themes) |
| ctrl+q | quit |

**KV blocks**: `█` used (coloured by chat; grey = benchmark), `▓` shared by several requests,
`░` cached (evictable, kept for prefix hits), `·` free. When there are more blocks than cells,
one cell stands for several blocks and shows the busiest.

**Prefix cache**: prompt tokens served from cached blocks / prompt tokens looked up.
**Preemptions**: requests evicted to free KV blocks (they resume later, often from the cache).
**Batch per step**: sequences, prefill and decode tokens, and the duration of each engine step.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "dismiss", "Close"), Binding("f1", "dismiss", "Close")]

    def __init__(self, note: str = ""):
        """note: Markdown added after the keys (attach mode says what a remote server cannot do)."""
        super().__init__()
        self.note = note

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-dialog"):
            yield Markdown(HELP + self.note)
