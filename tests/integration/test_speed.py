"""Speed options of a stage: sequence-parallel batch plan and row sharding, Liger refused on CPU, torch.compile."""

from __future__ import annotations

import pytest
import torch

from codellama_hf.data.packing import PackedCollator


@pytest.mark.slow
def test_torch_compile_option_gives_the_same_losses(tiny_model_factory, tmp_path):
    """TrainingArguments.torch_compile (the stages' option) on CPU: two steps, compiled and eager, equal losses.

    The aot_eager backend runs dynamo and AOTAutograd (the traced forward and backward graphs) without inductor's
    C++ code generation, which takes minutes on a 2-core machine; inductor passed the same test here in 6 minutes.
    """
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    rows = Dataset.from_list(
        [{"input_ids": (torch.arange(64) * (k + 3) % 200 + 3).tolist(), "seq_lengths": [20, 30, 14]} for k in range(2)]
    )
    torch._dynamo.reset()
    losses = {}
    for compiled in (False, True):
        model = tiny_model_factory(vocab_size=256, num_hidden_layers=2).train()
        model.config.use_cache = False
        args = TrainingArguments(
            output_dir=str(tmp_path / str(compiled)),
            max_steps=2,
            per_device_train_batch_size=1,
            learning_rate=1e-2,
            logging_steps=1,
            report_to="none",
            use_cpu=True,
            torch_compile=compiled,
            torch_compile_backend="aot_eager" if compiled else None,
            remove_unused_columns=False,
            save_strategy="no",
            seed=0,
        )
        trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=PackedCollator())
        trainer.train()
        losses[compiled] = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        if compiled:  # dynamo really traced graphs (the option reached accelerate)
            from torch._dynamo.utils import counters

            assert counters["stats"]["unique_graphs"] > 0
    assert len(losses[True]) == 2
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)


@pytest.mark.slow
def test_fused_loss_under_zero3_needs_the_registered_lm_head(tmp_path):
    """2-process ZeRO-3 on CPU: Liger's fused-linear forward with a plain-torch kernel (Triton has no CPU driver).

    With lm_head.weight registered, losses and the updated lm_head equal the unfused run's. (DeepSpeed 0.19.8, tested
    here, also gathers a partitioned parameter read during a forward through its parameter-dict getter; the explicit
    registration is DeepSpeed's documented API and does not depend on that.)
    """
    pytest.importorskip(
        "liger_kernel", reason="Liger's fused loss needs liger-kernel (pip install 'codellama_hf[liger]')"
    )
    import json
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    root = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
    with socket.socket() as probe:  # a free port: other suites may run torchrun at the same time
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    out = tmp_path / "result.json"
    env = {**os.environ, "PYTHONPATH": str(root), "DS_ACCELERATOR": "cpu", "LOCAL_SIZE": "2", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port]
        + [str(root / "tests" / "helpers" / "zero3_fused_loss.py"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["fused"]["losses"] == pytest.approx(result["unfused"]["losses"], rel=1e-5)
    assert result["unfused"]["losses"][1] < result["unfused"]["losses"][0]  # the step changed the weights
    assert result["fused"]["lm_head"] == pytest.approx(result["unfused"]["lm_head"], rel=1e-6)


def test_lcft_trains_with_ulysses_on_two_cpu_processes(tmp_path):
    """sequence_parallel_size 2 under accelerate + DeepSpeed ZeRO-3 on gloo: each process holds half of every row and
    attention exchanges shards (all-to-all) for heads; the run keeps its tokens per step and saves a model."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
    out, probe = tmp_path / "lcft", tmp_path / "probe.json"
    recipe = ["--output_dir", str(out), "--model_name_or_path", str(tmp_path / "none"), "--max_steps", "2"]
    recipe += ["--seq_len", "512", "--tokens_per_step", "1024", "--save_steps", "100", "--report_to", "none"]
    done = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
        + [
            str(root / "accelerate_configs" / "cpu_zero3.yaml"),
            str(root / "tests" / "helpers" / "sequence_parallel_stage.py"),
        ]
        + [str(probe), *recipe, "--sequence_parallel_size", "2"],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(probe.read_text())
    assert seen["position_ids"] == 256  # this process' half of each 512-token row
    assert seen["all_to_all"] > 0  # Ulysses' sequence <-> head exchanges
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["plan"]["sequence_parallel"] == 2 and lineage["plan"]["grad_accum"] == 2
    assert lineage["tokens_seen"] == 2 * 1024
