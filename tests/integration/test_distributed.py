"""Launch configurations train alike: fp32 gradient accumulation and the same parameter groups under both ZeRO-3
files (real DeepSpeed engines on CPU, gloo), fp32 master weights outside DeepSpeed, sharded FSDP checkpoints with
a full final save."""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers.distributed import CONFIGS, ROOT

HELPERS = ROOT / "tests" / "helpers"


def _run(script: str, *args: str, timeout: int = 900) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DS_ACCELERATOR": "cpu", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, str(HELPERS / script), *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _free_port() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


@pytest.mark.slow
def test_32_micro_steps_accumulate_like_fp32_and_bf16_accumulation_drifts():
    zero3, offload = (str(ROOT / "deepspeed_configs" / name) for name in ("zero3.json", "zero3_offload.json"))
    found = _run("deepspeed_accumulation.py", _free_port(), zero3, f"{zero3}:model", offload)
    for shipped in (zero3, offload):
        assert found[shipped]["grad_accum_dtype"] == "float32"
        assert found[shipped]["vs_fp32_sum"] < 1e-6  # the fp32 sum of the same micro-gradients (0.0 here)
    drifted = found[f"{zero3}:model"]
    assert drifted["grad_accum_dtype"] == "bfloat16"
    assert drifted["vs_bf16_sum"] < 1e-6 and drifted["vs_fp32_sum"] > 1e-3  # measured 6e-3 relative L2
    assert found["bf16_sum_vs_fp32_sum"] > 1e-3


@pytest.mark.slow  # the offload run compiles DeepSpeed's CPU Adam once (minutes; cached in ~/.cache/torch_extensions)
def test_both_zero3_configs_train_the_same_parameter_groups(tmp_path):
    found = {
        path.name: _run("deepspeed_groups.py", _free_port(), str(path), str(tmp_path / path.stem)) for path in CONFIGS
    }
    assert found["zero3.json"]["optimizer"] == "AdamW"
    assert found["zero3_offload.json"]["optimizer"] == "DeepSpeedCPUAdam"
    assert found["zero3.json"]["groups"] == found["zero3_offload.json"]["groups"]
    decay, no_decay = found["zero3.json"]["groups"]
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    assert all(name.endswith("proj.weight") or name == "lm_head.weight" for name in decay["params"])
    assert "model.embed_tokens.weight" in no_decay["params"] and "model.norm.weight" in no_decay["params"]
    assert all("norm" in name or "embed" in name for name in no_decay["params"])
