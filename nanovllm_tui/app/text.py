"""Make untrusted text (prompts, model output) inert: control characters become visible symbols, never terminal commands."""

from __future__ import annotations

# C0 controls except tab and newline, DEL, and the C1 range (0x80-0x9f, e.g. the 8-bit CSI 0x9b).
_TABLE = {c: 0x2400 + c for c in range(0x20) if c not in (0x09, 0x0A)}
_TABLE[0x7F] = 0x2421  # ␡
_TABLE.update(dict.fromkeys(range(128, 160), 65533))


def inert(text: str) -> str:
    """Replace control characters with Unicode control pictures ("\\x1b[2J" -> "␛[2J")."""
    return text.translate(_TABLE)
