"""Launching the stage recipes in real processes: shared by the end-to-end stage tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import sysconfig
from pathlib import Path

import yaml

from tests.helpers import ROOT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_env() -> dict:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def launch_command(accelerate_config: Path, recipe: str, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(accelerate_config),
        "--main_process_port",
        str(free_port()),
        str(ROOT / "recipes" / recipe),
        *args,
    ]


def run_launch(cmd: list[str], cwd: Path, log: Path) -> None:
    with open(log, "w") as out:
        proc = subprocess.run(cmd, cwd=cwd, env=launch_env(), stdout=out, stderr=subprocess.STDOUT, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{log.read_text()[-6000:]}"


def make_corpus(folder: Path) -> None:
    """Small real source files (standard library modules), so that most documents fit a context and get FIM."""
    folder.mkdir(parents=True)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    picked = [p for p in sorted(stdlib.rglob("*.py")) if 400 <= p.stat().st_size <= 1600 and "test" not in p.parts]
    for i, path in enumerate(picked[:240]):
        shutil.copy(path, folder / f"{i:03d}_{path.name}")


def make_accelerate_config(path: Path) -> None:
    """The shipped CPU ZeRO-3 config, with its DeepSpeed file made absolute so runs can start in any folder."""
    config = yaml.safe_load((ROOT / "accelerate_configs" / "cpu_zero3.yaml").read_text())
    ds = config["deepspeed_config"]
    assert ds["deepspeed_config_file"] == "deepspeed_configs/zero3.json"
    ds["deepspeed_config_file"] = str(ROOT / ds["deepspeed_config_file"])
    path.write_text(yaml.safe_dump(config))
