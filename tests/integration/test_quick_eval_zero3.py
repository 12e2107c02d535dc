"""Evaluation during training under a real 2-process DeepSpeed ZeRO-3 run on CPU (accelerate launch): every rank
evaluates the sharded model in lockstep, nothing stalls, and the numbers equal the standalone evaluation of the saved
folder."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.helpers import ROOT
from tests.helpers.crossfile import two_file_package
from tests.helpers.stages_e2e import launch_command, make_accelerate_config, make_corpus, run_launch

pytestmark = pytest.mark.slow


def test_quick_evaluations_under_zero3_equal_the_saved_model(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from codellama_hf.evaluation.during_training import QuickEvalConfig, QuickEvaluations

    repo = two_file_package(tmp_path / "pkg")
    make_corpus(tmp_path / "corpus")
    make_accelerate_config(tmp_path / "zero3.yaml")
    config = yaml.safe_load((ROOT / "recipes/configs/tiny/code.yaml").read_text())
    del config["dataset_mixture"]
    config.update(
        dataset_sources=[str(tmp_path / "corpus")],
        max_steps=2,
        tokens_per_step=1024,
        per_device_train_batch_size=1,
        save_steps=10,
        logging_steps=1,
        warmup_steps=0,
        quick_eval=["infilling", "perplexity"],
        quick_eval_steps=1,
        quick_eval_repositories=[str(repo)],
        report_to="tensorboard",
    )
    (tmp_path / "code.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "code"
    cmd = launch_command(
        tmp_path / "zero3.yaml", "code.py", "--config", str(tmp_path / "code.yaml"), "--output_dir", str(out)
    )
    run_launch(cmd, ROOT, tmp_path / "code.log")
    lineage = json.loads((out / "lineage.json").read_text())
    quick = lineage["evaluations_during_training"]
    assert [h["step"] for h in quick["history"]] == [1, 2] and quick["failures"] == {}
    last = quick["history"][-1]["metrics"]
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    settings = QuickEvalConfig(**{**quick["config"], "evaluations": tuple(quick["config"]["evaluations"])})
    standalone, failures = QuickEvaluations(tokenizer, settings)(model)
    assert not failures and set(standalone) == set(last)
    assert standalone == pytest.approx(last, rel=1e-4)
    assert list(out.rglob("events.out.tfevents.*"))
