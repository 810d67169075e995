"""The help screen: what the app shows and every key."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

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
| ctrl+tab / ctrl+shift+tab, alt+1..9 | next / previous chat, chat by number |
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

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-dialog"):
            yield Markdown(HELP)
