"""GPU tier of the speed options: Liger's kernels against the unfused path, Ulysses sequence parallelism.

Skipped without CUDA (Triton needs a GPU). The CPU tier (tests/test_speed.py) covers the same code paths: Liger's
fused-linear forward under ZeRO-3 with a plain-torch stand-in for the kernel, and Ulysses on 2 gloo processes with
sdpa; here the kernels themselves run, and Ulysses runs on NCCL with the recipe's bf16.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
ROOT = Path(__file__).resolve().parents[2]


def _row():
    from codellama_hf.data.packing import PackedCollator

    ids = (torch.arange(2048) * 7919 % 31000 + 3).tolist()
    return PackedCollator()([{"input_ids": ids, "seq_lengths": [700, 1000, 348]}])


@pytest.mark.skipif(importlib.util.find_spec("liger_kernel") is None, reason="pip install 'codellama_hf[liger]'")
def test_liger_kernels_give_the_unfused_loss_and_gradients():
    from transformers import AutoModelForCausalLM
    from transformers.integrations.liger import apply_liger_kernel

    from codellama_hf.models import llama_config

    results = []
    for liger in (False, True):
        torch.manual_seed(0)
        config = llama_config("tiny", vocab_size=32016, num_hidden_layers=2)
        config.use_cache = False
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32).cuda()
        if liger:
            apply_liger_kernel(model, {})  # RMSNorm, RoPE, SwiGLU, fused linear cross-entropy
        model.train()
        batch = {k: v.cuda() for k, v in _row().items()}
        loss = model(**batch).loss
        loss.backward()
        results.append((loss.item(), model.lm_head.weight.grad.clone(), model.model.embed_tokens.weight.grad.clone()))
    (plain, head, embed), (fused, fused_head, fused_embed) = results
    assert fused == pytest.approx(plain, rel=1e-4)
    assert torch.allclose(fused_head, head, atol=1e-5, rtol=1e-3)
    assert torch.allclose(fused_embed, embed, atol=1e-5, rtol=1e-3)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="sequence parallelism needs 2 GPUs")
def test_lcft_with_sequence_parallel_2_trains(tmp_path):
    """The tiny LCFT recipe with sequence_parallel_size 2 on 2 GPUs under ZeRO-3 (Ulysses through DeepSpeed)."""
    out = tmp_path / "lcft"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
        + [str(ROOT / "accelerate_configs" / "zero3.yaml"), "--num_processes", "2", str(ROOT / "recipes" / "lcft.py")]
        + ["--output_dir", str(out), "--sequence_parallel_size", "2", "--max_steps", "3", "--save_steps", "100"]
        + ["--model_name_or_path", str(tmp_path / "none"), "--bf16", "true"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["plan"]["sequence_parallel"] == 2 and lineage["plan"]["grad_accum"] == 4
