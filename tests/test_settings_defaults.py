"""The app's default session settings come from the model's generation_config.json, else known-good values."""

from __future__ import annotations

import json

from nanovllm_tui.app.session import FALLBACK_SAMPLING, settings_for_model


def test_generation_config_sampling_values_become_the_defaults(tmp_path):
    (tmp_path / "generation_config.json").write_text(
        json.dumps({"temperature": 0.6, "top_p": 0.95, "top_k": 20, "eos_token_id": 2})
    )
    s = settings_for_model(str(tmp_path))
    assert (s.temperature, s.top_p, s.top_k) == (0.6, 0.95, 20)


def test_without_sampling_keys_or_with_bad_values_the_fallback_is_used(tmp_path, demo_model_dir):
    for model_dir in (str(demo_model_dir), None):
        s = settings_for_model(model_dir)
        assert all(getattr(s, k) == v for k, v in FALLBACK_SAMPLING.items())
    (tmp_path / "generation_config.json").write_text(json.dumps({"temperature": -3}))
    s = settings_for_model(str(tmp_path))
    assert all(getattr(s, k) == v for k, v in FALLBACK_SAMPLING.items())
