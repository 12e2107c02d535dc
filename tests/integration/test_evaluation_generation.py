"""The generation layer and the model-driven evaluations, end to end on a tiny random Llama on CPU.

Scores are 0 with a random model; what is checked is the plumbing: prompts, padding, stopping, decoding, files."""

from __future__ import annotations

import json

import pytest

from tests.helpers import run_cli


@pytest.mark.slow
def test_evaluate_cli_end_to_end(tmp_path, tiny_model_dir):
    model_dir = tiny_model_dir
    out = tmp_path / "results"
    done = run_cli(
        "evaluate",
        "humaneval",
        "--model",
        str(model_dir),
        "--out",
        str(out),
        "--limit",
        "2",
        "--max-new-tokens",
        "4",
        "--allow-code-execution",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    folder = out / "tiny-model"
    result = json.loads((folder / "humaneval.json").read_text())
    assert result["metrics"] == {"pass@1": 0.0} and result["num_problems"] == 2 and result["total_problems"] == 164
    assert result["config"]["do_sample"] is False and result["samples_file"] == "humaneval.samples.jsonl"
    assert result["sandbox"]["landlock"] >= 0 and result["versions"]["transformers"]
    assert len((folder / "humaneval.samples.jsonl").read_text().splitlines()) == 2
    report = (folder / "report.md").read_text()
    assert (
        "| humaneval | pass@1 | 0.0000 | 2 | 2 | strip, completion | subset of 164; 2 cut by the token cap |" in report
    )
    assert result["config"]["prompt"]["form"] == "strip" and result["config"]["backend"]["backend"] == "hf"
    assert sum(result["failures"].values()) == 2 and "## Why programs failed" in report
    outcomes = [json.loads(line) for line in (folder / "humaneval.results.jsonl").read_text().splitlines()]
    assert all(o["cause"] and o["timeout"] > 0 and o["finish_reason"] in ("stop", "eos", "length") for o in outcomes)
    refused = run_cli("evaluate", "humaneval", "--model", str(model_dir), "--out", str(out))
    assert refused.returncode == 2 and "--allow-code-execution" in refused.stderr
