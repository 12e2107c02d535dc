"""The miniature's real-base presets are runnable by construction: every stage's batch plan is one the training
config accepts, LCFT is measured beyond the code stage's length, and the intervals in the report are Wilson's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from codellama_hf.training.batch_plan import batch_plan
from experiments.miniature.presets import PRESETS
from experiments.miniature.real_base import wilson

ROOT = Path(__file__).resolve().parents[2]
REAL = [name for name, preset in PRESETS.items() if preset.base != "tiny"]


def test_real_base_presets_exist():
    assert {"smollm2", "gpu", "smollm2-smoke"} <= set(REAL)


@pytest.mark.parametrize("name", REAL)
def test_real_base_preset_is_consistent(name):
    preset = PRESETS[name]
    assert set(preset.stages) == {"code", "python", "lcft", "instruct"}  # no from-scratch pretraining
    for stage, s in preset.stages.items():
        argv = s.argv()
        micro = int(argv[argv.index("--per_device_train_batch_size") + 1])
        plan = batch_plan(
            tokens_per_step=s.tokens_per_step,
            seq_len=s.seq_len,
            micro_batch=micro,
            world_size=1,
            max_steps=s.max_steps,
        )
        assert plan.tokens_per_step == s.tokens_per_step, stage
        assert int(argv[argv.index("--save_steps") + 1]) <= s.max_steps
    code, lcft = preset.stages["code"], preset.stages["lcft"]
    assert lcft.seq_len > code.seq_len  # LCFT trains longer sequences than the code stage
    assert max(preset.lcft_lengths) > code.seq_len and code.seq_len in preset.lcft_lengths
    assert preset.eval_tokens_per_file >= max(preset.lcft_lengths) + 1
    toy = json.loads((ROOT / "experiments" / "miniature" / "toy_problems.json").read_text())
    assert 0 < preset.instruct_problems <= len(toy)
    assert 0 < preset.humaneval_problems <= 164 and 0 < preset.infill_examples <= 1033
    assert preset.bf16


def test_wilson_interval_known_values():
    # Wilson (1927) score interval, z = 1.96: 0/20 -> [0, 0.161], 10/20 -> [0.299, 0.701], 20/20 -> [0.839, 1]
    low, high = wilson(0, 20)
    assert low == 0.0 and high == pytest.approx(0.1611, abs=1e-4)
    low, high = wilson(10, 20)
    assert (low, high) == (pytest.approx(0.2993, abs=1e-4), pytest.approx(0.7007, abs=1e-4))
    low, high = wilson(20, 20)
    assert low == pytest.approx(0.8389, abs=1e-4) and high == pytest.approx(1.0)
    assert wilson(0, 0) == (0.0, 1.0)
