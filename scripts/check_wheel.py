"""Fail unless a wheel installs exactly one top-level package, `nanovllm_tui` (CI's packaging check)."""

from __future__ import annotations

import sys
import zipfile


def top_level_names(wheel: str) -> set[str]:
    """The first path component of every file the wheel installs, its .dist-info folder left out."""
    with zipfile.ZipFile(wheel) as zf:
        names = {name.split("/", 1)[0] for name in zf.namelist()}
    return {n for n in names if not n.endswith((".dist-info", ".data"))}


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: check_wheel.py WHEEL", file=sys.stderr)
        return 2
    found = top_level_names(sys.argv[1])
    if found != {"nanovllm_tui"}:
        print(f"wheel installs top-level {sorted(found)}; only 'nanovllm_tui' is allowed", file=sys.stderr)
        return 1
    print(f"ok: {sys.argv[1]} installs only nanovllm_tui")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
