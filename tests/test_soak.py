"""CI's 60-second soak of the process service (scripts/soak.py): chats, aborts, policy switches, preemptions."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # a minute of load by design


def test_soak_60s_leaves_no_blocks_no_stuck_handles_and_flat_rss(tmp_path, demo_model_dir):
    out = tmp_path / "soak.json"
    proc = subprocess.run(
        [sys.executable, "scripts/soak.py", "--seconds", "60", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["failures"] == []
    summary = report["summary"]
    assert summary["submitted"] > 20  # it did real work
    assert summary["aborts_sent"] > 0 and summary["policy_switches"] > 0
    assert report["stats"]["num_blocks_used"] == 0
    assert summary["preemptions"] > 0  # the preemption pressure really happened
