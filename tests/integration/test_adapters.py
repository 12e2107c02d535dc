"""LoRA / QLoRA (codellama_hf.adapters): options, a QLoRA step on CPU, merge-and-save, the base check."""

from __future__ import annotations

import json

import pytest
import torch

from codellama_hf.adapters import (
    METADATA_FILE,
)


@pytest.mark.slow
def test_a_stage_recipe_trains_qlora_and_saves_adapter_and_merged_model(base_dirs, tmp_path):
    """recipes/lcft.py with use_peft + load_in_4bit: adapter in output_dir/adapter, merged plain model beside it.

    (lcft, not python: the tiny bases carry the infilling pieces, which the python stage refuses.)"""
    import os
    import subprocess
    import sys

    from transformers import AutoModelForCausalLM

    from codellama_hf.models import rope_theta
    from tests.helpers import ROOT

    out = tmp_path / "lcft-qlora"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "recipes" / "lcft.py"),
            "--model_name_or_path",
            str(base_dirs[0]),
            "--output_dir",
            str(out),
            "--use_peft",
            "true",
            "--load_in_4bit",
            "true",
            "--lora_r",
            "4",
            "--seq_len",
            "128",
            "--tokens_per_step",
            "256",
            "--max_steps",
            "3",
            "--report_to",
            "none",
            "--rope_theta",
            "1000000",
            "--save_steps",
            "100",
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    adapter = json.loads((out / "adapter" / METADATA_FILE).read_text())
    assert adapter["quantization"] == "4bit" and adapter["lora"]["r"] == 4
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["stage"] == "lcft" and lineage["adapter"]["quantization"] == "4bit"
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert rope_theta(merged.config) == 1e6  # the theta trained with, not the base's
    base = AutoModelForCausalLM.from_pretrained(base_dirs[0])
    q_merged = merged.model.layers[0].self_attn.q_proj.weight
    assert not torch.equal(q_merged, base.model.layers[0].self_attn.q_proj.weight)  # the update is in the weights
    assert torch.equal(merged.model.embed_tokens.weight, base.model.embed_tokens.weight)  # LoRA left them alone
