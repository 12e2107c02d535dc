"""Benchmarks, scoring and the `evaluate` CLI: real data, real sandbox, real subprocesses."""

from __future__ import annotations

import json

import pytest

from codellama_hf.evaluation.benchmarks import get_benchmark
from codellama_hf.evaluation.multipl_e import MultiPLE
from codellama_hf.evaluation.report import SCHEMA
from codellama_hf.evaluation.scoring import score
from tests.helpers import load_recipe, run_cli
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


@pytest.mark.slow
def test_evaluate_recipe_and_cli_write_the_same_results(tmp_path, tiny_model_dir, capsys):
    """One setting set, two entry points: the same infilling result (sandbox included) and the same perplexity."""
    import json

    from codellama_hf.cli import main

    recipe = load_recipe("evaluate")
    text = tmp_path / "code.py"
    text.write_text("def add(a, b):\n    return a + b\n" * 4)
    model = ["--model", str(tiny_model_dir), "--batch_size", "2"]
    generation = ["--limit", "1", "--max_new_tokens", "2"]
    ppl = ["--ppl_lengths", "16", "--ppl_files", str(text)]
    config = tmp_path / "evaluate.yaml"  # the recipe's settings file: only what differs from the defaults
    config.write_text("tasks: [humaneval-infill-single, perplexity]\nallow_code_execution: true\n")
    recipe.main(["--config", str(config), *model, *generation, *ppl, "--out", str(tmp_path / "recipe")])
    cli = [*model, "--out", str(tmp_path / "cli")]
    assert main(["evaluate", "humaneval-infill-single", *cli, *generation, "--allow-code-execution"]) == 0
    assert main(["evaluate", "perplexity", *cli, *ppl]) == 0
    for name in ("humaneval-infill-single-psm", "perplexity"):
        recipe_result, cli_result = (
            json.loads((tmp_path / side / "tiny-model" / f"{name}.json").read_text()) for side in ("recipe", "cli")
        )
        assert recipe_result["metrics"] == cli_result["metrics"] and recipe_result["config"] == cli_result["config"]
        assert recipe_result["num_problems"] == cli_result["num_problems"] == 1
    assert "report:" in capsys.readouterr().out
