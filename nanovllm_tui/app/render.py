"""Pure text renderers for the dashboard: sparklines, gauges and the KV block heat map (Rich Text in, nothing else)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

from rich.text import Text

from nanovllm_tui.engine.stats import CACHED, FREE, USED, BlockMap

TICKS = "▁▂▃▄▅▆▇█"
# One colour per chat session (cycled); requests that belong to no session (the benchmark) get OTHER_COLOUR.
SESSION_COLOURS = ("#4ea1ff", "#f0a030", "#5fd75f", "#d75fd7", "#ff5f5f", "#5fd7d7", "#d7d75f", "#af87ff")
OTHER_COLOUR = "#b0b0b0"
CACHED_STYLE, FREE_STYLE, SHARED_STYLE = "#3a6ea5", "#3a3a3a", "bold #ffffff"


def session_colour(session: int | None) -> str:
    return OTHER_COLOUR if session is None else SESSION_COLOURS[(session - 1) % len(SESSION_COLOURS)]


def resample(values: Sequence[float], width: int) -> list[float]:
    """The last `width` values, or, if there are more, their max per bucket (so spikes stay visible)."""
    if width <= 0 or not values:
        return []
    if len(values) <= width:
        return list(values)
    out = []
    for i in range(width):
        lo, hi = i * len(values) // width, (i + 1) * len(values) // width
        out.append(max(values[lo : max(hi, lo + 1)]))
    return out


def spark(values: Sequence[float], width: int, style: str = "", hi: float | None = None) -> Text:
    """A one-line sparkline, right-aligned (newest at the right), scaled to max(values) or `hi`."""
    vals = resample(values, width)
    top = hi if hi is not None else max(vals, default=0.0)
    chars = []
    for v in vals:
        if top <= 0 or v <= 0:
            chars.append(" " if v <= 0 else TICKS[0])
        else:
            chars.append(TICKS[min(len(TICKS) - 1, int(v / top * (len(TICKS) - 1) + 0.5))])
    return Text(" " * (width - len(chars)) + "".join(chars), style=style)


def gauge(frac: float, width: int, style: str = "#5fd75f") -> Text:
    """A horizontal bar of `width` cells filled to `frac` (eighth-cell precision)."""
    frac = min(1.0, max(0.0, frac))
    eighths = round(frac * width * 8)
    full, part = divmod(eighths, 8)
    bar = "█" * full + ("▏▎▍▌▋▊▉"[part - 1] if part else "")
    text = Text(bar, style=style)
    text.append("·" * (width - len(bar)), style=FREE_STYLE)
    return text


def block_cells(block_map: BlockMap, num_cells: int) -> tuple[list[tuple[int, str | None]], int]:
    """Downsample to at most `num_cells` cells of (state, owner): busiest state wins, then the most common owner.

    Returns the cells and how many blocks each cell stands for.
    """
    n = len(block_map.states)
    per_cell = max(1, -(-n // max(1, num_cells)))
    cells = []
    for start in range(0, n, per_cell):
        states = block_map.states[start : start + per_cell]
        state = max(states)  # FREE < CACHED < USED < SHARED
        owners = Counter(o for o, s in zip(block_map.owners[start : start + per_cell], states) if s >= USED and o)
        cells.append((state, owners.most_common(1)[0][0] if owners else None))
    return cells, per_cell


def heat_map(
    block_map: BlockMap, width: int, height: int, session_of: Callable[[str | None], int | None]
) -> tuple[Text, int]:
    """The block map as `height` rows of `width` cells, used blocks in their session's colour."""
    cells, per_cell = block_cells(block_map, max(1, width * height))
    text = Text()
    for i, (state, owner) in enumerate(cells):
        if i and i % width == 0:
            text.append("\n")
        if state == FREE:
            text.append("·", FREE_STYLE)
        elif state == CACHED:
            text.append("░", CACHED_STYLE)
        elif state == USED:
            text.append("█", session_colour(session_of(owner)))
        else:
            text.append("▓", f"{session_colour(session_of(owner))} on #ffffff" if owner else SHARED_STYLE)
    return text, per_cell


def legend(sessions: Sequence[int], other: bool) -> Text:
    text = Text("chat ")
    for n in sessions:
        text.append("█", session_colour(n)).append(f"{n} ")
    if other:
        text.append(" █", OTHER_COLOUR).append("bench")
    text.append("  ▓", f"{SESSION_COLOURS[0]} on #ffffff").append("shared")
    text.append("  ░", CACHED_STYLE).append("cached")
    text.append("  ·", FREE_STYLE).append("free")
    return text
