"""The package's shape, held by CI: small modules and functions, and data flowing one way through the layers.

app / server / remote / bench -> engine -> models -> layers -> kernels; nothing imports a layer above its own.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "nanovllm_tui"
MAX_FILE_LINES = 300
MAX_FUNCTION_LINES = 60
# What each lower layer may import from the package (itself included); the top layers may import anything.
ALLOWED = {
    "engine": {"engine", "models", "layers", "kernels"},
    "models": {"models", "layers", "kernels"},
    "layers": {"layers", "kernels"},
    "kernels": {"kernels"},
}


def sources() -> list[pathlib.Path]:
    return sorted(PACKAGE.rglob("*.py"))


def package_imports(tree: ast.AST) -> set[str]:
    """First-level subpackages of nanovllm_tui that a module imports."""
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "nanovllm_tui" and len(parts) > 1:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_and_function_sizes(path: pathlib.Path):
    text = path.read_text()
    assert text.count("\n") <= MAX_FILE_LINES, f"{path.name} has {text.count(chr(10))} lines: split it by job"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, f"{path.name}:{node.lineno} {node.name} is {length} lines"


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_lower_layers_import_nothing_above_them(layer: str):
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        bad = package_imports(ast.parse(path.read_text())) - ALLOWED[layer]
        assert not bad, f"{path.relative_to(PACKAGE)} imports nanovllm_tui.{sorted(bad)}: data flows one way"


def test_no_attribute_delegation_tricks():
    """No `__getattr__` delegation on classes, no `__dict__` tricks (module-level PEP 562 lazy imports are fine)."""
    for path in sources():
        tree = ast.parse(path.read_text())
        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
            methods = {f.name for f in cls.body if isinstance(f, ast.FunctionDef)}
            assert "__getattr__" not in methods, f"{path.name}: {cls.name}.__getattr__ hides what it holds"
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "__dict__":
                raise AssertionError(f"{path.name}:{node.lineno} reaches into __dict__")
