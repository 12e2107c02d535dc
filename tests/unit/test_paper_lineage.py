"""The paper's lineage (Figure 2): Code Llama - Python starts from a code stage without infilling.

Llama 2 -> code (no FIM, 32,000 pieces) -> Python -> LCFT. The configs chain that way and the python stage's start
check reads the lineage; the recipe runs of the branch are in tests/integration/test_paper_lineage.py.
"""

from __future__ import annotations

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
