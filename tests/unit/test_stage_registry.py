"""A new stage is one `Stage` registration and one YAML: a toy stage registered here trains for two steps."""

from __future__ import annotations

import json

import datasets
import pytest
import yaml

from codellama_hf.data.stream import DocumentEncoder
from codellama_hf.training import STAGES, Stage, StageData, get_stage, register_stage, run_stage

WORDS = "alpha beta gamma delta epsilon zeta eta theta".split()


def toy_documents(data_args, config, tokenizer) -> StageData:
    """The toy stage's own data builder: one JSON-lines file of sentences, no FIM."""
    documents = datasets.load_dataset("json", data_files=data_args.dataset_sources[0], split="train")
    return StageData(documents, DocumentEncoder(tokenizer, config.seq_len, None), {"toy": len(documents)})


@pytest.fixture
def toy_stage(tmp_path):
    sentences = tmp_path / "sentences.jsonl"
    with sentences.open("w") as out:
        for i in range(64):
            out.write(json.dumps({"text": " ".join(WORDS[(i + j) % len(WORDS)] for j in range(5 + i % 7))}) + "\n")
    recipe = {
        "stage": "toy",
        "output_dir": str(tmp_path / "out"),
        "init_model_size": "tiny",
        "dtype": "float32",
        "dataset_mixture": "none",
        "dataset_sources": [str(sentences)],
        "seq_len": 64,
        "tokens_per_step": 256,
        "per_device_train_batch_size": 2,
        "max_steps": 2,
        "learning_rate": 1.0e-3,
        "warmup_steps": 0,
        "logging_steps": 1,
        "save_steps": 1,
        "report_to": "none",
        "dataloader_num_workers": 0,
        "seed": 1,
    }
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(recipe))
    stage = register_stage(Stage("toy", toy_documents, default_config=path, description="a test stage"))
    yield stage
    STAGES.pop("toy")


def test_a_registered_toy_stage_runs_two_steps(toy_stage, tmp_path):
    with pytest.raises(ValueError, match="a stage named 'toy' is already registered"):
        register_stage(Stage("toy", toy_documents))
    assert get_stage("toy") is toy_stage
    out = run_stage("toy", argv=[])
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["stage"] == "toy" and lineage["steps"] == 2 and lineage["tokens_seen"] == 2 * 256
    assert lineage["data"] == {"toy": 64, "epochs": 1}
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert (out / "checkpoint-2" / "data_state" / "rank0.json").is_file()


def test_unknown_stage_names_the_registered_ones():
    with pytest.raises(ValueError, match="unknown stage 'nope': registered stages are code, instruct, lcft"):
        get_stage("nope")


def test_a_resume_from_the_final_checkpoint_trains_no_further_step(toy_stage, tmp_path):
    """The stream has no length: resumed at max_steps, the Trainer would otherwise take one step past the end."""
    out = run_stage("toy", argv=[])
    weights = (out / "model.safetensors").read_bytes()
    (out / "lineage.json").unlink()  # the final save did not finish: the rerun resumes from checkpoint-2
    again = run_stage("toy", argv=["--resume_from_checkpoint", "latest"])
    state = json.loads((again / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and json.loads((again / "lineage.json").read_text())["steps"] == 2
    assert sorted(p.name for p in again.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert (again / "model.safetensors").read_bytes() == weights
