"""One import namespace: Hugging Face's `kernels` package imports as itself beside ours, and the public API
imports no torch until it is used."""

from __future__ import annotations

import subprocess
import sys


def run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120).stdout


def test_hugging_face_kernels_package_is_not_shadowed():
    out = run(
        "import kernels, transformers.integrations.hub_kernels as hk\n"
        "from nanovllm_tui.engine.execution.loader import load_model\n"
        "import nanovllm_tui.kernels\n"
        "print(hasattr(kernels, 'get_kernel'), 'site-packages' in kernels.__file__, nanovllm_tui.kernels.__name__)"
    )
    assert out.split() == ["True", "True", "nanovllm_tui.kernels"]


def test_import_nanovllm_tui_imports_no_torch_until_used():
    out = run(
        "import sys, nanovllm_tui\nprint('torch' in sys.modules)\nnanovllm_tui.LLM\nprint('torch' in sys.modules)"
    )
    assert out.split() == ["False", "True"]
