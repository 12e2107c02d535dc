"""Benchmarks, scoring and the `evaluate` CLI: real data, real sandbox, real subprocesses."""

from __future__ import annotations

import json

import pytest

from codellama_hf.evaluation.benchmarks import get_benchmark
from codellama_hf.evaluation.multipl_e import MultiPLE
from codellama_hf.evaluation.report import SCHEMA
from codellama_hf.evaluation.scoring import score
from tests.helpers import run_cli
from tests.helpers.evaluation import _write_jsonl


@pytest.mark.slow
def test_canonical_humaneval_scores_one_through_the_cli(tmp_path):
    benchmark = get_benchmark("humaneval")
    samples = _write_jsonl(
        tmp_path / "canonical.jsonl", [{"task_id": p.task_id, "completion": p.reference} for p in benchmark.problems]
    )
    done = run_cli("evaluate", "score", "humaneval", "--samples", str(samples), "--allow-code-execution")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "canonical.humaneval.json").read_text())
    assert result["schema"] == SCHEMA and result["metrics"] == {"pass@1": 1.0}
    assert result["num_problems"] == result["total_problems"] == result["num_samples"] == 164
    assert "| humaneval | pass@1 | 1.0000 | 164 | 164 |" in done.stdout
    outcomes = [json.loads(line) for line in (tmp_path / "canonical.results.jsonl").read_text().splitlines()]
    assert len(outcomes) == 164 and all(o["passed"] for o in outcomes)


ADD_BODIES = {
    "py": ("    return x + y\n", "    return x - y\n"),
    "cpp": ("    return x + y;\n", "    return x - y;\n"),
    "java": ("        return x + y;\n", "        return x - y;\n"),
    "cs": ("        return x + y;\n", "        return x - y;\n"),
}


@pytest.mark.slow
@pytest.mark.parametrize("language", ["py", "cpp", "java", "cs"])
def test_multipl_e_runs_or_reports_skipped(language):
    benchmark = MultiPLE(language)
    assert len(benchmark.problems) in (158, 161) and benchmark.problems[0].stop
    add = next(p for p in benchmark.problems if p.task_id == "HumanEval_53_add")
    right, wrong = ADD_BODIES[language]
    samples = [{"task_id": add.task_id, "completion": right}, {"task_id": add.task_id, "completion": wrong}]
    scored = score(benchmark, samples, allow_code_execution=True, progress=False)
    missing = benchmark.missing_toolchain()
    if missing:  # e.g. no mono/mcs here: reported as skipped, never as failed
        assert scored.skipped == missing and not scored.samples and not scored.metrics
        return
    assert [s["passed"] for s in scored.samples] == [True, False], scored.samples
    assert scored.metrics == {"pass@1": 0.5}
