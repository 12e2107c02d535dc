"""On one GPU: two steps of the code stage under DeepSpeed ZeRO-3 in bf16 (the shipped zero3.json, fp32 gradient
accumulation), through the real recipe and `accelerate launch`."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_two_zero3_bf16_steps_on_one_gpu(tmp_path):
    out = tmp_path / "code"
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "1",
        "--use_deepspeed",
        "--deepspeed_config_file",
        str(ROOT / "deepspeed_configs" / "zero3.json"),
        "--zero3_init_flag",
        "true",
        str(ROOT / "recipes" / "code.py"),
        "--output_dir",
        str(out),
        "--max_steps",
        "2",
        "--save_steps",
        "1",
        "--tokens_per_step",
        "4096",
        "--bf16",
        "true",
        "--dtype",
        "bfloat16",
        "--report_to",
        "none",
    ]
    done = subprocess.run(
        command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=1200
    )
    assert done.returncode == 0, done.stderr[-4000:]
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["steps"] == 2 and lineage["hyperparameters"]["bf16"] is True
    assert any(out.glob("*.safetensors"))
    for checkpoint in out.glob("checkpoint-*"):
        config = json.loads((checkpoint / "config.json").read_text())
        assert config["rope_theta"] == config["rope_parameters"]["rope_theta"]
