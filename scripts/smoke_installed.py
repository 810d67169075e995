"""Run from outside the repo against a non-editable install: Hugging Face's `kernels` imports as itself,
and the installed engine answers a greedy prompt with the demo model (CI's install check)."""

from __future__ import annotations

import kernels

import nanovllm_tui
from nanovllm_tui import LLM, SamplingParams
from nanovllm_tui.engine.demo_model import ensure_demo_model


def main() -> None:
    if "site-packages" not in (nanovllm_tui.__file__ or ""):
        raise SystemExit(f"nanovllm_tui imported from {nanovllm_tui.__file__}, not from the installed wheel")
    if not hasattr(kernels, "get_kernel"):
        raise SystemExit(f"'kernels' is not Hugging Face's package: {kernels.__file__}")
    llm = LLM(ensure_demo_model(), max_model_len=256, num_kvcache_blocks=16, kvcache_block_size=16)
    out = llm.generate(["The capital of France is"], SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)
    text = out[0]["text"]
    if not text.strip():
        raise SystemExit("the installed engine returned an empty answer")
    print(f"ok: installed engine answered {text!r} (kernels from {kernels.__file__})")


if __name__ == "__main__":
    main()
