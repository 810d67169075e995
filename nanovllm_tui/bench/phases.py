"""Start-up and benchmark phases on a terminal: one line when a phase ends, with its size and elapsed time, and a
live line while it runs (only when the stream is a terminal; a pipe or a log gets the finished lines alone).

A progress callback is called as progress(phase, done, total, unit): the demo model (download, unpack, convert,
save) and the engine (load, cuda graphs) report this way. The first call of a phase starts its clock; done ==
total (> 0) ends it; total 0 means not known yet; unit "B" is shown in MB with a rate. The app's CLI, `nanovllm-tui
bench` and its warm-up use PhasePrinter. Imports no torch and no UI.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

LIVE_INTERVAL_S = 0.1  # at most 10 redraws a second: a 272-tensor load reports ~272 times in 2 s
TICK_S = 0.5  # the live line's elapsed time moves at least this often
CLEAR_LINE = "\r\x1b[K"  # back to column 0, erase to the end of the line


def amount(done: float, unit: str) -> str:
    """A quantity for a person: bytes in MB, anything else counted."""
    return f"{done / 1e6:.1f} MB" if unit == "B" else f"{int(done)} {unit}"


def finished_line(phase: str, done: int, unit: str, seconds: float) -> str:
    """`download: 92.9 MB in 1.7 s (54.6 MB/s)`: what a finished phase did and how long it took."""
    rate = f" ({done / 1e6 / seconds:.1f} MB/s)" if unit == "B" and seconds > 0 else ""
    return f"{phase}: {amount(done, unit)} in {seconds:.1f} s{rate}"


def live_line(phase: str, done: int, total: int, unit: str, seconds: float) -> str:
    """`download: 45.1/92.9 MB (49 %), 0.9 s`: a running phase so far."""
    if total > 0:
        whole = amount(total, unit)
        part = f"{done / 1e6:.1f}/{whole}" if unit == "B" else f"{done}/{whole}"
        so_far = f"{part} ({100 * done // total} %)"
    else:
        so_far = amount(done, unit)
    return f"{phase}: {so_far}, {seconds:.1f} s…"


class PhasePrinter:
    """A progress callback that prints phases to sys.stdout or sys.stderr (see the module docstring).

    On a terminal a small thread redraws the live line every TICK_S while a phase is open, so the elapsed time
    moves even when the phase itself is quiet for a while (transformers parsing a GGUF before its first tensor).
    Picklable: the app's engine process gets a copy and prints its load phases to the same terminal before the
    app starts, so the stream is named and looked up at each call (the copy writes to its own process's)."""

    def __init__(self, stream: str = "stderr", prefix: str = "", live: bool = True) -> None:
        if stream not in ("stdout", "stderr"):
            raise ValueError(f"stream={stream!r}; choose stdout or stderr")
        self.stream = stream
        self.prefix = prefix
        self.live = live  # False: finished lines only, even on a terminal (e.g. bench --no-progress)
        self._started: dict[str, float] = {}
        self._open: tuple[str, int, int, str] | None = None  # the phase on the live line, as last reported
        self._drawn = False  # a live line is on the terminal, not ended by a newline
        self._last_draw = 0.0
        self._lock = threading.Lock()  # the caller's thread and the ticker both draw
        self._ticker: threading.Thread | None = None

    def __reduce__(self) -> tuple[type[PhasePrinter], tuple[str, str, bool]]:
        """A copy (the engine process's) has the settings, and no phase, lock or ticker of its own yet."""
        return (PhasePrinter, (self.stream, self.prefix, self.live))

    def _out(self) -> TextIO:
        return sys.stdout if self.stream == "stdout" else sys.stderr

    def __call__(self, phase: str, done: int, total: int, unit: str) -> None:
        now = time.monotonic()
        with self._lock:
            start = self._started.setdefault(phase, now)
            out = self._out()
            if total > 0 and done >= total:
                del self._started[phase]
                line = self.prefix + finished_line(phase, done, unit, now - start)
                out.write((CLEAR_LINE if self._drawn else "") + line + "\n")
                self._drawn, self._open = False, None
                out.flush()
            elif self.live and out.isatty():
                redraw = self._open is None or self._open[0] != phase or now - self._last_draw >= LIVE_INTERVAL_S
                self._open = (phase, done, total, unit)
                if redraw:
                    self._draw(now)
                if self._ticker is None:
                    self._ticker = threading.Thread(target=self._tick, name="phase-ticker", daemon=True)
                    self._ticker.start()

    def _draw(self, now: float) -> None:
        """The live line of the open phase (the lock held)."""
        if self._open is None:
            return
        phase, done, total, unit = self._open
        out = self._out()
        out.write(CLEAR_LINE + self.prefix + live_line(phase, done, total, unit, now - self._started[phase]))
        out.flush()
        self._drawn, self._last_draw = True, now

    def _tick(self) -> None:
        while True:
            time.sleep(TICK_S)
            with self._lock:
                if self._open is None:
                    self._ticker = None
                    return
                self._draw(time.monotonic())

    def say(self, line: str) -> None:
        """A line of its own (e.g. `warming up: 1 request…`), after any live line."""
        with self._lock:
            out = self._out()
            out.write((CLEAR_LINE if self._drawn else "") + self.prefix + line + "\n")
            out.flush()
            self._drawn = False

    def __enter__(self) -> PhasePrinter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        """Leaving the block by an exception: the phase it was in failed; its live line goes (see clear)."""
        if exc_type is not None:
            self.clear()

    def clear(self) -> None:
        """Erase a live line left by a phase that did not end (it failed), so an error starts on a clean line."""
        with self._lock:
            self._open = None
            out = self._out()
            if self._drawn or (self.live and out.isatty()):
                # The engine process's copy may have drawn the line: on a terminal, erase it whatever this copy drew.
                out.write(CLEAR_LINE)
                out.flush()
            self._drawn = False
