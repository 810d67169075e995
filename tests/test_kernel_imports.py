"""Kernels are leaves: no module of nanovllm_tui/kernels imports the layers, models, engine or app packages."""

from __future__ import annotations

import ast
import pathlib


def kernel_imports_outside(package: pathlib.Path) -> list[str]:
    """'module: imported name' for every import (top level or inside a function) of a module of `package` that
    reaches the layers, models, engine or app packages: kernels are leaves."""
    forbidden = tuple(f"nanovllm_tui.{name}" for name in ("layers", "models", "engine", "app"))
    found = []
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolved against nanovllm_tui.kernels
                    parent = ["nanovllm_tui", "kernels"][: 3 - node.level]
                    base = ".".join([*parent, base] if base else parent)
                names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            else:
                continue
            found += [f"{path.name}: {name}" for name in names if name.startswith(forbidden)]
    return found


def test_kernels_import_no_layer_model_engine_or_app() -> None:
    package = pathlib.Path(__file__).resolve().parents[1] / "nanovllm_tui" / "kernels"
    assert len(list(package.glob("*.py"))) > 5
    assert kernel_imports_outside(package) == []


def test_kernel_import_check_sees_every_form(tmp_path) -> None:
    """The check above catches plain, from- and relative imports, also inside functions."""
    (tmp_path / "a.py").write_text("import nanovllm_tui.layers.linear\n")
    (tmp_path / "b.py").write_text("def f():\n    from nanovllm_tui.engine import config\n")
    (tmp_path / "c.py").write_text("from ..models import llama\n")
    (tmp_path / "d.py").write_text("from nanovllm_tui import app\nfrom nanovllm_tui.kernels import torch_ref\n")
    found = kernel_imports_outside(tmp_path)
    assert sorted({f.split(":")[0] for f in found}) == ["a.py", "b.py", "c.py", "d.py"], found
