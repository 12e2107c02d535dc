"""Repository layout (headers, dependency order) and the cross-file infilling evaluation, on real files."""

from __future__ import annotations

import json

import pytest

from tests.helpers import run_cli


@pytest.mark.slow
def test_cross_file_cli(tmp_path, repo, tiny_model_dir):
    model_dir = tiny_model_dir
    out = tmp_path / "results"
    done = run_cli(
        "evaluate",
        "cross-file",
        "--model",
        str(model_dir),
        "--out",
        str(out),
        "--repositories",
        str(repo),
        "--max-new-tokens",
        "3",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    folder = out / "tiny-model"
    result = json.loads((folder / "cross-file-psm.json").read_text())
    assert result["num_problems"] == 2 and result["details"]["left_out"] == {"file unreadable": 1, "file not utf-8": 1}
    assert len((folder / "cross-file-psm.samples.jsonl").read_text().splitlines()) == 2
    assert "| cross-file-psm | middle_loss_with_context |" in (folder / "report.md").read_text()
