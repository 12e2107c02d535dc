"""`codellama-hf plan`: the memory arithmetic against hand-computed cases and against peaks measured on CPU."""

from __future__ import annotations

import json

import pytest

from codellama_hf.planner import GiB, ModelShape, Setup, memory, plan

SEVEN_B = ModelShape.from_size("7b")


def lcft_7b(**changes) -> Setup:
    """Code Llama 7B long-context fine-tuning (2M tokens of 16,384-token rows) on 8 x 80 GiB."""
    return Setup(**{"gpus": 8, "gpu_memory_gib": 80, "seq_len": 16384, "tokens_per_step": 2**21, **changes})


def test_parameter_counts_match_the_released_models():
    assert round(SEVEN_B.parameters / 1e9, 3) == 6.739
    assert round(ModelShape.from_size("13b").parameters / 1e9, 3) == 13.016
    assert round(ModelShape.from_size("34b").parameters / 1e9, 3) == 33.744


def test_7b_lcft_zero3_flash_full_checkpointing_is_about_28_gib():
    m = memory(SEVEN_B, lcft_7b(), micro_batch=1)
    p, h, s, v = SEVEN_B.parameters, 4096, 16384, 32016
    # by hand: 18 bytes per parameter over 8 GPUs (fp32-accumulated gradients); the bf16 input of each of the 32
    # layers; the logits
    assert m.parameters + m.gradients + m.optimizer == pytest.approx(18 * p / 8)
    assert m.logits == 12 * s * v  # ~5.9 GiB: fp32 log-softmax output, its gradient, the gradient it makes
    layer = s * (2 * (4 + 2) * h + 2 * 4 * h + 4 * 2 * 11008)  # one layer recomputed during backward
    assert m.activations == pytest.approx(32 * 2 * h * s + layer + s * h * 6)
    assert 27 * GiB <= m.total <= 29 * GiB


def test_fused_loss_sequence_parallel_and_offload_shrink_their_terms():
    base = memory(SEVEN_B, lcft_7b(), 1)
    fused = memory(SEVEN_B, lcft_7b(fused_loss=True), 1)
    assert fused.logits < base.logits / 4 and fused.activations == base.activations
    halved = memory(SEVEN_B, lcft_7b(sequence_parallel=2), 1)
    assert halved.activations == pytest.approx(base.activations / 2, rel=1e-6)
    assert halved.logits == base.logits / 2 and halved.optimizer == base.optimizer
    offloaded = memory(SEVEN_B, lcft_7b(offload="optimizer"), 1)
    assert offloaded.optimizer == 0 and offloaded.parameters == base.parameters
    ddp = memory(SEVEN_B, lcft_7b(zero_stage=0), 1)
    assert ddp.parameters + ddp.gradients + ddp.optimizer == pytest.approx(16 * SEVEN_B.parameters)


def test_plan_picks_the_largest_micro_batch_and_keeps_tokens_per_step():
    result = plan(SEVEN_B, lcft_7b())
    assert result.fits
    setup = result.setup
    assert setup.data_parallel * result.micro_batch * result.grad_accum * setup.seq_len == 2**21
    bigger = memory(SEVEN_B, setup, result.micro_batch * 2)
    assert bigger.total > (80 - 1) * 0.95 * GiB  # the next micro-batch would not fit
    sp = plan(SEVEN_B, lcft_7b(sequence_parallel=4, micro_batch=1))
    assert sp.grad_accum == 4 * plan(SEVEN_B, lcft_7b(micro_batch=1)).grad_accum  # 2 replicas instead of 8


def test_34b_lcft_on_8_gpus_does_not_fit_and_names_the_smallest_change():
    result = plan(ModelShape.from_size("34b"), lcft_7b(tokens_per_step=2**20))
    assert not result.fits
    assert result.change is not None and result.changed is not None
    assert plan(ModelShape.from_size("34b"), result.changed).fits
    assert "does not fit; smallest change that fits" in result.describe()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"sequence_parallel": 3}, "sequence_parallel_size=3 does not divide the 8 processes"),
        ({"gpus": 64, "sequence_parallel": 64, "tokens_per_step": 2**22}, "does not divide the model's 32 attention"),
        ({"micro_batch": 3}, "micro_batch=3 does not divide"),
        ({"gpus": 256}, "cannot reach the token batch: 256 processes"),
        ({"offload": "all", "zero_stage": 2}, "offload=all"),
    ],
)
def test_bad_settings_are_named(changes, message):
    with pytest.raises(ValueError, match=message):
        plan(SEVEN_B, lcft_7b(**changes))


def test_cli_prints_the_plan_and_exits_1_when_nothing_fits(capsys):
    from codellama_hf.cli import main

    assert main(["plan", "--size", "7b", "--stage", "lcft", "--gpus", "8", "--gpu-memory", "80", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["fits"] and shown["setup"]["seq_len"] == 16384  # from recipes/configs/7b/lcft.yaml
    assert main(["plan", "--size", "34b", "--stage", "lcft", "--gpus", "8", "--gpu-memory", "80"]) == 1
    assert "smallest change that fits" in capsys.readouterr().out
    assert main(["plan", "--size", "7b", "--stage", "lcft", "--gpus", "8", "--gpu-memory", "80", "--sp", "5"]) == 2
    assert "sequence_parallel_size=5" in capsys.readouterr().err
