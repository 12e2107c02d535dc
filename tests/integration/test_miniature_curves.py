"""The miniature report's evaluation curves, drawn from the quick_evaluations.json a real (short) stage wrote."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow

PNG = b"\x89PNG\r\n\x1a\n"


def test_report_curves_from_a_real_stage_run(tmp_path, repo):
    from codellama_hf.evaluation.during_training import read_quick_evaluations
    from codellama_hf.training import run_stage
    from experiments.miniature.presets import QuickEval
    from experiments.miniature.report import plot_quick_eval_curves, quick_eval_curves
    from experiments.miniature.run import Run

    quick = QuickEval(
        2,
        options={
            "infilling_tasks": 2,
            "context_tokens": 256,
            "max_new_tokens": 4,
            "perplexity_lengths": [32, 64],
            "perplexity_max_files": 1,
        },
    )
    out = tmp_path / "run"
    argv = [
        "--output_dir",
        str(out / "models" / "code"),
        "--dataset_mixture",
        "none",
        "--dataset_sources",
        str(repo),
        "--seq_len",
        "64",
        "--tokens_per_step",
        "128",
        "--max_steps",
        "2",
        "--save_steps",
        "2",
        "--logging_steps",
        "1",
        "--packing_buffer",
        "4",
        "--data_streams_per_process",
        "1",
        "--dataloader_num_workers",
        "0",
        "--report_to",
        "none",
        "--quick_eval_repositories",
        str(repo),
        *quick.argv(2),
    ]
    folder = run_stage("code", argv=argv)
    written = read_quick_evaluations(folder)
    assert written["config"]["infilling_tasks"] == 2 and written["config"]["perplexity_lengths"] == [32, 64]
    assert json.loads((folder / "lineage.json").read_text())["evaluations_during_training"] == written

    curves = quick_eval_curves(Run(out, "smoke", 0))
    assert list(curves) == ["code"]  # the stages that ran quick evaluations
    curve = curves["code"]
    assert curve["steps"] == [h["step"] for h in written["history"]] == [1, 2]
    assert set(curve["metrics"]) == {
        "infill_exact_match_with_context",
        "infill_exact_match_without_context",
        "infill_middle_loss_with_context",
        "infill_middle_loss_without_context",
        "perplexity@32",
        "perplexity@64",
    }
    for key, values in curve["metrics"].items():
        assert values == [h["metrics"][key] for h in written["history"]]
    assert curve["failures"] == written["failures"] == {}
    png = tmp_path / "curves.png"
    assert plot_quick_eval_curves(curves, png) and png.read_bytes().startswith(PNG)
    assert not plot_quick_eval_curves({}, tmp_path / "none.png") and not (tmp_path / "none.png").exists()
