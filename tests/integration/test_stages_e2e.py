"""End-to-end training stages: real 2-process DeepSpeed ZeRO-3 runs on CPU through `accelerate launch`.

One code-stage run (FIM on, 2 dataloader workers per process tokenizing and packing the stream; made once per
session, even across xdist workers) is the reference for three checks:
the saved folder, the learning rate at the last step, and a run killed with SIGKILL mid-way then resumed, which
must log the same losses and FIM counts step for step. The long-context stage then continues the code stage's
output, launched the way the README's main job is (no --config: the tiny preset, which finds outputs/tiny/code in
its working directory).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT
from tests.helpers.stages_e2e import launch_command, launch_env, make_accelerate_config, make_corpus, run_launch

pytestmark = pytest.mark.slow

CODE_STEPS = 8
CODE_TOKENS = 2048  # per step: 2 processes x 1 sequence x 2 accumulation steps x 512 tokens
PEAK_LR = 3e-3


def _descendants(pid: int) -> list[int]:
    """Process ids below `pid` (the launcher's workers), read from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _history(folder: Path) -> dict[int, dict]:
    """Logged training steps of a finished run, by step."""
    state = json.loads((folder / "trainer_state.json").read_text())
    return {e["step"]: e for e in state["log_history"] if "loss" in e}


@pytest.fixture(scope="session")
def shared(tmp_path_factory, request) -> Path:
    """A folder every xdist worker of this session sees, so the reference run is made once, not once per worker."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if hasattr(request.config, "workerinput") else base) / "stages-e2e"


def _make_code_config(path: Path, corpus: Path) -> None:
    """The tiny code preset on the small corpus: 8 steps of 2,048 tokens, checkpoints every 3."""
    config = yaml.safe_load((ROOT / "recipes/configs/tiny/code.yaml").read_text())
    del config["dataset_mixture"]
    config.update(
        dataset_sources=[str(corpus)],
        max_steps=CODE_STEPS,
        tokens_per_step=CODE_TOKENS,
        per_device_train_batch_size=1,
        save_steps=3,
        save_total_limit=5,
        logging_steps=1,
        warmup_steps=2,
        learning_rate=PEAK_LR,
        overwrite_output_dir=False,
    )
    path.write_text(yaml.safe_dump(config))


@pytest.fixture(scope="session")
def code_run(shared) -> Path:
    """The reference code-stage run (2 processes, ZeRO-3, FIM), with its corpus and configs beside it."""
    from filelock import FileLock

    with FileLock(f"{shared}.lock"):
        if not (shared / "code" / "lineage.json").exists():
            shutil.rmtree(shared, ignore_errors=True)
            make_corpus(shared / "corpus")
            make_accelerate_config(shared / "cpu_zero3.yaml")
            _make_code_config(shared / "code.yaml", shared / "corpus")
            cmd = launch_command(
                shared / "cpu_zero3.yaml",
                "code.py",
                "--config",
                str(shared / "code.yaml"),
                "--output_dir",
                str(shared / "code"),
            )
            run_launch(cmd, ROOT, shared / "code.log")
    return shared / "code"


def test_code_stage_zero3_fim(code_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from codellama_hf.tokenizer import supports_infilling

    log = (code_run.parent / "code.log").read_text()
    assert "2 processes x 1 sequences x 2 accumulation steps x 512 tokens" in log  # the plan, printed first
    history = _history(code_run)
    assert sorted(history) == list(range(1, CODE_STEPS + 1))
    losses = [history[s]["loss"] for s in sorted(history)]
    assert sum(losses[-3:]) / 3 < losses[0] - 0.3, losses
    assert sum(history[s]["fim_psm"] for s in history) > 3 and sum(history[s]["fim_spm"] for s in history) > 3
    # the paper's schedule: warm-up from 0, and the last update uses exactly peak/30
    assert history[1]["learning_rate"] == 0.0
    assert history[CODE_STEPS]["learning_rate"] == pytest.approx(PEAK_LR / 30, rel=1e-12)

    model = AutoModelForCausalLM.from_pretrained(code_run)
    tokenizer = AutoTokenizer.from_pretrained(code_run)
    assert supports_infilling(tokenizer) and len(tokenizer) == 4016
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    assert model.lm_head.weight.abs().sum() > 0  # real weights, gathered from ZeRO-3 shards
    config = json.loads((code_run / "config.json").read_text())
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == 10000.0

    lineage = json.loads((code_run / "lineage.json").read_text())
    assert lineage["stage"] == "code" and lineage["base_model"]["random_init"] == "tiny"
    assert lineage["tokens_seen"] == CODE_STEPS * CODE_TOKENS == lineage["plan"]["total_tokens"]
    assert lineage["data"]["fim"] == {"rate": 0.9, "spm_rate": 0.5, "seed": 42}
    assert lineage["hyperparameters"]["adam_beta2"] == 0.95
    assert (code_run / "training_curves.png").stat().st_size > 0
    assert list((code_run / "runs").rglob("events.out.tfevents.*"))


def test_sigkill_and_resume_reproduce_the_run(code_run, tmp_path):
    out = tmp_path / "killed"
    log = tmp_path / "killed.log"
    cmd = launch_command(
        code_run.parent / "cpu_zero3.yaml",
        "code.py",
        "--config",
        str(code_run.parent / "code.yaml"),
        "--output_dir",
        str(out),
    )
    with open(log, "w") as sink:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=launch_env(), stdout=sink, stderr=subprocess.STDOUT)
        deadline = time.time() + 500
        while not (out / "checkpoint-3" / "run_signature.json").exists():
            assert proc.poll() is None, log.read_text()[-6000:]
            assert time.time() < deadline, "no checkpoint-3 in time"
            time.sleep(0.05)
        for pid in [proc.pid, *_descendants(proc.pid)]:  # the launcher and its workers, as a node failure would
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
    assert not (out / "lineage.json").exists(), "the run finished before it could be killed"
    # each process saved where its data streams stood: the resume continues from there instead of replaying
    saved = sorted(p.name for p in (out / "checkpoint-3" / "data_state").iterdir())
    assert saved == ["rank0.json", "rank1.json"]

    run_launch(cmd + ["--resume_from_checkpoint"], ROOT, tmp_path / "resumed.log")
    resumed_log = (tmp_path / "resumed.log").read_text()
    assert "resuming from" in resumed_log and "checkpoint-" in resumed_log

    reference, resumed = _history(code_run), _history(out)
    assert sorted(resumed) == sorted(reference)
    for step in sorted(reference):
        assert resumed[step]["loss"] == pytest.approx(reference[step]["loss"], abs=1e-6), step
        assert (resumed[step]["fim_psm"], resumed[step]["fim_spm"]) == (
            reference[step]["fim_psm"],
            reference[step]["fim_spm"],
        ), step
    assert json.loads((out / "lineage.json").read_text())["tokens_seen"] == CODE_STEPS * CODE_TOKENS


def test_lcft_main_job_zero3_continues_the_code_stage(code_run, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from codellama_hf.models import effective_rope_theta

    cwd = tmp_path / "main-job"
    shutil.copytree(code_run, cwd / "outputs" / "tiny" / "code", ignore=shutil.ignore_patterns("checkpoint-*"))
    sources = json.dumps({name: [str(code_run.parent / "corpus")] for name in ("code", "nl_code", "nl")})
    run_launch(
        launch_command(
            code_run.parent / "cpu_zero3.yaml",
            "lcft.py",
            "--mixture_sources",
            sources,
            "--seq_len",
            "1024",
            "--tokens_per_step",
            "2048",
            "--max_steps",
            "6",
            "--warmup_steps",
            "1",
            "--logging_steps",
            "1",
        ),
        cwd,
        tmp_path / "lcft.log",
    )
    out = cwd / "outputs" / "tiny" / "lcft"
    log = (tmp_path / "lcft.log").read_text()
    assert "lcft stage finished" in log and "rope theta 1,000,000" in log

    history = _history(out)
    losses = [history[s]["loss"] for s in sorted(history)]
    assert len(losses) == 6 and min(losses[-2:]) < losses[0], losses

    config = json.loads((out / "config.json").read_text())
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == 1e6
    assert config["max_position_embeddings"] == 16384
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert effective_rope_theta(model) == pytest.approx(1e6, rel=1e-6)
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer) == 4016
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 100, 200]])).logits).all()

    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["stage"] == "lcft" and lineage["rope_theta"] == 1e6
    assert lineage["base_model"]["name_or_path"] == "outputs/tiny/code"
    assert lineage["base_model"]["lineage"]["stage"] == "code"
    assert lineage["data"]["mixture"] == "code" and lineage["tokens_seen"] == 6 * 2048
