"""The paper's lineage (Figure 2): Code Llama - Python starts from a code stage without infilling.

Llama 2 -> code (no FIM, 32,000 pieces) -> Python -> LCFT. The configs chain that way, a run of the tiny Python branch
with Meta's real Llama 2 tokenizer yields a 32,000-row model without sentinels, and a Python stage pointed at a FIM
model (32,016 rows, sentinels) stops before training with an error that says what to do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from codellama_hf.family import FAMILY, Variant, check_python_start

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "recipes" / "configs"


def _yaml(size: str, name: str) -> dict:
    return yaml.safe_load((CONFIGS / size / f"{name}.yaml").read_text())


@pytest.mark.parametrize("size", ["7b", "13b", "tiny"])
def test_python_configs_continue_a_code_stage_without_infilling(size):
    code, python = _yaml(size, "code_nofim"), _yaml(size, "python")
    assert code["stage"] == "code" and code["fim_rate"] == 0.0 and not code.get("resize_token_embeddings")
    assert python["model_name_or_path"] == code["output_dir"] and python["fim_rate"] == 0.0
    if size == "tiny":
        assert code["infilling_pieces"] is False and python["infilling_pieces"] is False
    else:  # Llama 2's tokenizer without the 16 pieces, and the paper's code-stage hyperparameters
        from codellama_hf.training.config import parse_stage_config

        path = CONFIGS / size / "code_nofim.yaml"
        _, data_args, config = parse_stage_config(
            "code", ["--config", str(path), "--plan_world_size", "64", "--plan_only"]
        )
        assert data_args.fim_rate == 0.0 and config.plan.total_tokens >= 500e9 and config.learning_rate == 3e-4
        assert "no-infilling" in code["tokenizer_name_or_path"]
        fim_code = _yaml(size, "code")
        same = {k: v for k, v in fim_code.items() if k not in {"output_dir", "tokenizer_name_or_path", "fim_rate"}}
        assert {k: code[k] for k in same if k not in {"resize_token_embeddings", "fim_spm_rate"}} == {
            k: v for k, v in same.items() if k not in {"resize_token_embeddings", "fim_spm_rate"}
        }


def test_family_lineage_names_shipped_configs():
    for variant in FAMILY:
        stages = variant.lineage
        for stage, config in stages:
            assert _yaml(variant.size, config)["stage"] == stage
        first = _yaml(variant.size, stages[0][1])
        assert (first["fim_rate"] > 0) == variant.infilling, variant
    assert Variant("7b", "python").lineage_text == "Llama 2 → code (no FIM) → Python → LCFT"
    assert Variant("13b", "instruct").lineage_text == "Llama 2 → code (FIM) → LCFT → Instruct"
    assert Variant("34b", "python").lineage[0] == ("code", "code")  # 34B's only code stage has no FIM


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


def test_check_python_start_reads_the_lineage(tiny_tokenizer_dir, tmp_path):
    from transformers import AutoTokenizer

    from codellama_hf.tokenizer import build_tiny_tokenizer

    plain = AutoTokenizer.from_pretrained(build_tiny_tokenizer(tmp_path / "plain", infilling=False))
    check_python_start(plain, 4000, "ok", {"stage": "code", "data": {"fim": None}, "base_model": {"lineage": None}})
    fim_lineage = {"stage": "code", "data": {"fim": {"rate": 0.9}}, "base_model": {"lineage": None}}
    lcft = {"stage": "lcft", "data": {"fim": None}, "base_model": {"lineage": fim_lineage}}
    with pytest.raises(ValueError, match=r"records FIM training in stage\(s\) code"):
        check_python_start(plain, 4000, "folder", lcft)
    with pytest.raises(ValueError, match="4016 embedding rows for a 4000-token tokenizer"):
        check_python_start(plain, 4016, "folder", None)
    with pytest.raises(ValueError, match="its tokenizer has the infilling pieces"):
        check_python_start(AutoTokenizer.from_pretrained(tiny_tokenizer_dir), 4016, "folder", None)
