"""`python -m experiments.repository_fim --preset smoke`: both arms train from one base with the same budget, both
are scored on the same held-out cross-file tasks, and the report is written; a rerun skips every finished step."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow


def test_smoke_experiment_end_to_end(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "experiments.repository_fim", "--preset", "smoke", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    lineage = {
        arm: json.loads((out / "models" / arm / "lineage.json").read_text())
        for arm in ("file-level", "repository-level")
    }
    for arm, facts in lineage.items():
        assert facts["base_model"]["name_or_path"] == str(out / "models" / "base"), arm
        assert facts["data"]["fim"]["rate"] == 0.9
    assert "repository_samples" in lineage["repository-level"]["data"]
    assert "repository_samples" not in lineage["file-level"]["data"]

    results = json.loads((out / "report" / "results.json").read_text())
    trained = results["training"]
    assert trained["file-level"]["steps"] == trained["repository-level"]["steps"] == 1
    assert trained["file-level"]["tokens_seen"] == trained["repository-level"]["tokens_seen"] == 640
    assert results["tasks"] == 4  # 2 held-out repositories x 2 tasks, the same for both arms
    for arm in ("file-level", "repository-level"):
        for variant in ("with_context", "without_context"):
            cell = results["arms"][arm][variant]
            assert cell["exact_match"]["n"] == 4 and 0 <= cell["exact_match"]["low"] <= cell["exact_match"]["high"]
            assert cell["middle_loss"]["mean"] > 0
    assert isinstance(results["repository_level_helped"], bool)
    report = (out / "report" / "report.md").read_text()
    assert "Repository-level FIM vs file-level FIM" in report and "comparison.png" in report
    assert (out / "report" / "comparison.png").read_bytes().startswith(b"\x89PNG")

    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("skip ") == 7  # data x2, base, two arms, two evaluations
    assert json.loads((out / "report" / "results.json").read_text())["arms"] == results["arms"]
