"""The paper's lineage (Figure 2) through the recipes: a run of the tiny Python branch with Meta's real Llama 2
tokenizer yields a 32,000-row model without sentinels, and a Python stage pointed at a FIM model (32,016 rows,
sentinels) stops before training with an error that says what to do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

CONFIGS = ROOT / "recipes" / "configs"


def _recipe(stage: str, config: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, str(ROOT / "recipes" / f"{stage}.py"), "--config", str(CONFIGS / "tiny" / f"{config}.yaml")]
    small = ["--report_to", "none", "--max_steps", "2", "--seq_len", "128", "--tokens_per_step", "256"]
    small += ["--per_device_train_batch_size", "2", "--save_steps", "2", "--logging_steps", "1"]
    return subprocess.run([*cmd, *small, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_python_branch_yields_32000_rows_without_sentinels(llama2_dir, tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    from codellama_hf.tokenizer import SENTINELS, build_codellama_tokenizer, supports_infilling

    tokenizer = build_codellama_tokenizer(llama2_dir / "tokenizer.model", tmp_path / "tok", infilling=False)
    code, python = tmp_path / "code_nofim", tmp_path / "python"
    done = _recipe(
        "code", "code_nofim", "--tokenizer_name_or_path", str(tokenizer), "--output_dir", str(code), cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    done = _recipe("python", "python", "--model_name_or_path", str(code), "--output_dir", str(python), cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    assert AutoConfig.from_pretrained(python).vocab_size == 32000
    saved = AutoTokenizer.from_pretrained(python)
    assert len(saved) == 32000 and not supports_infilling(saved)
    assert not set(SENTINELS) & set(saved.get_vocab())
    lineage = json.loads((python / "lineage.json").read_text())
    assert lineage["stage"] == "python" and lineage["data"]["fim"] is None
    parent = lineage["base_model"]["lineage"]
    assert parent["stage"] == "code" and parent["data"]["fim"] is None


@pytest.mark.slow
def test_python_stage_refuses_a_fim_model_before_training(tiny_tokenizer_dir, tiny_model_factory, tmp_path):
    from transformers import AutoTokenizer

    fim_model = tmp_path / "code-with-fim"
    tiny_model_factory(4016).save_pretrained(fim_model)
    AutoTokenizer.from_pretrained(tiny_tokenizer_dir).save_pretrained(fim_model)
    out = tmp_path / "python"
    done = _recipe("python", "python", "--model_name_or_path", str(fim_model), "--output_dir", str(out), cwd=tmp_path)
    assert done.returncode != 0
    said = done.stdout + done.stderr
    assert f"the python stage cannot start from {fim_model}" in said
    assert "infilling pieces" in said and "code_nofim.yaml" in said
    assert "Traceback" not in said  # one clear line, not a stack
    assert not any(out.glob("checkpoint-*")) and not (out / "model.safetensors").exists()
