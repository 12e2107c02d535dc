"""`codellama-hf data prepare`, then a 2-process launch of the tiny code stage: the launch memory-maps the prepared
table (nothing rebuilt, no process waiting on another's tokenization); a launch with other data settings says that
it builds the table itself, on process 0, while the other process waits."""

from __future__ import annotations

import subprocess

import pytest

from tests.helpers import ROOT, run_cli
from tests.helpers.stages_e2e import launch_command, launch_env, make_accelerate_config

pytestmark = pytest.mark.slow

BUILDS = "data: no prepared table for these data settings, so this launch builds it"


def _launch(tmp_path, env, name: str, *args: str) -> str:
    accelerate_config = tmp_path / "accelerate.yaml"
    if not accelerate_config.exists():
        make_accelerate_config(accelerate_config)  # 2 processes, DeepSpeed ZeRO-3 over gloo
    cmd = [
        *launch_command(accelerate_config, "code.py"),
        *("--output_dir", str(tmp_path / name), "--max_steps", "2", "--save_steps", "100", "--report_to", "none"),
        *("--dataloader_num_workers", "0", "--packing_buffer", "16", "--quick_eval_steps", "0"),
        *args,
    ]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-6000:]
    return log


def test_prepare_then_launch_memory_maps_the_table(tmp_path):
    env = {**launch_env(), "HF_DATASETS_CACHE": str(tmp_path / "datasets")}
    config = str(ROOT / "recipes" / "configs" / "tiny" / "code.yaml")
    prepared = run_cli("data", "prepare", "--config", config, "--num-proc", "2", env=env, cwd=tmp_path)
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    assert "documents in" in prepared.stdout and "code: 0.85" in prepared.stdout, prepared.stdout
    (table,) = (tmp_path / "datasets" / "codellama_hf" / "mixtures").iterdir()
    written = (table / "indices.arrow").stat().st_mtime_ns

    log = _launch(tmp_path, env, "prepared")
    assert BUILDS not in log and "table read from the caches" in log, log[-4000:]
    assert (table / "indices.arrow").stat().st_mtime_ns == written
    assert [p.name for p in table.parent.iterdir()] == [table.name]

    log = _launch(tmp_path, env, "unprepared", "--data_seed", "11")  # another schedule: nobody prepared it
    assert f"[process 0] {BUILDS}" in log and "[process 1]" not in log, log[-4000:]
    assert "the other 1 processes wait for it, for at most ddp_timeout=1800" in log
    assert "table built at launch" in log and len(list(table.parent.iterdir())) == 2
