"""AppFooter: Textual's compact Footer with its keys in a fixed order and only those that fit whole shown.

Textual's Footer lays every key out in one row, in binding-resolution order (a focused widget's priority keys
first), and docks the command-palette key over its right end, so on a narrow terminal the last keys are cut
mid-word under it ("f3 Das▏^p palette"). Here a key that does not fit is hidden instead, and the keys a new
user needs most (send, stop, help, the dashboard, back) are the last to go.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.widgets import Footer
from textual.widgets._footer import FooterKey  # the Footer's own key widget (textual.widgets does not re-export it)

# The order keys are shown in (by action); actions not listed follow in the Footer's own order.
ORDER = (
    "send",
    "stop",
    "back_to_chat",
    "pop_screen",
    "run",
    "stop_run",
    "regenerate",
    "copy",
    "new_session",
    "close_session",
    "help",
    "settings",
    "dashboard",
    "toggle_policy",
    "benchmark",
    "sessions",
    "export",
)
# Kept first when the row is too narrow for every key, best first; the others go in ORDER's order.
FIRST = (
    "send",
    "stop",
    "back_to_chat",
    "pop_screen",
    "help",
    "dashboard",
    "run",
    "stop_run",
    "settings",
    "new_session",
)


def _rank(key: FooterKey, names: tuple[str, ...]) -> int:
    """Where a key's action stands in `names` (len(names) for the rest)."""
    action = key.action.rpartition(".")[2]
    return names.index(action) if action in names else len(names)


def _width(key: FooterKey) -> int:
    """Cells the key takes in the row: its label, padding and border, and its margins."""
    styles = key.styles
    return key.render().cell_len + styles.gutter.width + styles.margin.left + styles.margin.right


class AppFooter(Footer):
    """A compact Footer whose keys never show cut off: those that don't fit the width are hidden."""

    def __init__(self) -> None:
        super().__init__(compact=True)

    def compose(self) -> ComposeResult:
        widgets = list(super().compose())
        keys = [w for w in widgets if isinstance(w, FooterKey) and not w.has_class("-command-palette")]
        keys.sort(key=lambda k: _rank(k, ORDER))  # stable: unlisted actions keep the Footer's order
        yield from keys
        yield from (w for w in widgets if w not in keys)

    async def recompose(self) -> None:
        # The Footer recomposes whenever the bindings change (focus moves, a screen opens).
        await super().recompose()
        self.call_after_refresh(self.fit_keys)

    def on_resize(self) -> None:
        self.call_after_refresh(self.fit_keys)

    def fit_keys(self) -> None:
        """Show the keys that fit beside the command-palette key, in FIRST's order, then ORDER's."""
        keys = list(self.query_children(FooterKey))
        room = self.size.width - sum(_width(k) for k in keys if k.has_class("-command-palette"))
        others = [k for k in keys if not k.has_class("-command-palette")]
        for key in sorted(others, key=lambda k: (_rank(k, FIRST), others.index(k))):
            width = _width(key)
            key.display = width <= room
            if key.display:
                room -= width
