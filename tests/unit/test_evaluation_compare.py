"""`codellama-hf evaluate compare`: two models' infilling results side by side, pass@1 change with a paired 95%
interval from the per-sample outcomes the sandbox wrote (evaluation/compare.py)."""

from __future__ import annotations

import json
import math
import statistics

import pytest

from codellama_hf.evaluation.benchmarks import get_benchmark
from codellama_hf.evaluation.compare import Z95, compare_results, unpaired_change
from codellama_hf.evaluation.runner import ExecutionSettings, score_samples
from tests.helpers import cli, load_recipe

TASK = "humaneval-infill-single"
PROBLEMS = 10


def _scored(folder, solved: int) -> None:
    """Real sandbox scoring of samples that solve the first `solved` of PROBLEMS problems (the canonical middle)
    and miss the others (a wrong line)."""
    problems = get_benchmark(TASK).problems[:PROBLEMS]
    folder.mkdir()
    samples = folder / "samples.jsonl"
    samples.write_text(
        "".join(
            json.dumps({"task_id": p.task_id, "completion": p.reference if i < solved else "    raise ValueError()"})
            + "\n"
            for i, p in enumerate(problems)
        )
    )
    score_samples(TASK, samples, execution=ExecutionSettings(allow_code_execution=True, workers=2))


@pytest.fixture(scope="module")
def before_after(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    _scored(root / "before", 3)
    _scored(root / "after", 7)
    return root / "before", root / "after"


def test_paired_interval_from_the_sandbox_outcomes(before_after):
    before, after = before_after
    (row,) = compare_results(before, after)
    assert (row["task"], row["metric"], row["problems"], row["paired"]) == (TASK, "pass@1", PROBLEMS, True)
    assert row["before"] == pytest.approx(0.3) and row["after"] == pytest.approx(0.7)
    diffs = [0.0] * 3 + [1.0] * 4 + [0.0] * 3  # problems 3-6 changed from missed to solved
    half = Z95 * statistics.stdev(diffs) / math.sqrt(PROBLEMS)
    assert row["change"] == pytest.approx(0.4) and row["ci95"] == pytest.approx([0.4 - half, 0.4 + half])
    # without the per-sample outcomes: two independent proportions, a wider interval
    for side in before_after:
        (side / "samples.results.jsonl").unlink()
    (row,) = compare_results(before, after)
    assert row["paired"] is False and row == {**row, **unpaired_change(0.3, PROBLEMS, 0.7, PROBLEMS)}
    assert row["ci95"][1] - row["ci95"][0] > 2 * half


def test_cli_prints_and_writes_the_comparison_and_refuses_what_it_cannot_compare(before_after, tmp_path):
    before, after = before_after
    done = cli("evaluate", "compare", str(before), str(after), "--out", str(tmp_path / "compare.md"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"| {TASK} | pass@1 | 0.300 | 0.700 | +0.400 |" in done.stdout
    assert "# Before / after" in (tmp_path / "compare.md").read_text()
    done = cli("evaluate", "compare", str(before), str(after), "--tasks", "humaneval")
    assert done.returncode != 0 and f"task 'humaneval' has no (unskipped) result in {before}" in done.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "x.json").write_text("{}")
    done = cli("evaluate", "compare", str(empty), str(after))
    assert done.returncode != 0 and "hold no infilling results in common" in done.stderr


def test_recipe_takes_a_baseline_folder_and_refuses_a_missing_one(before_after, tmp_path):
    """recipes/evaluate.py --baseline: checked when parsed, before any model is loaded or generation runs."""
    recipe = load_recipe("evaluate")
    *_, suite = recipe.parse(["--model", "m", "--tasks", TASK, "--baseline", str(before_after[0])])
    assert suite.baseline == str(before_after[0])
    with pytest.raises(ValueError, match=f"baseline={tmp_path / 'nothing'}: no such results folder"):
        recipe.parse(["--model", "m", "--baseline", str(tmp_path / "nothing")])
