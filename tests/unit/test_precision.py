"""Launch configurations train alike: fp32 gradient accumulation and the same parameter groups under both ZeRO-3
files (real DeepSpeed engines on CPU, gloo), fp32 master weights outside DeepSpeed, sharded FSDP checkpoints with
a full final save."""

import json

import pytest
import torch
import yaml

from codellama_hf.training.precision import (
    check_deepspeed_config,
    decay_parameter_names,
    gather_full_state_for_final_save,
    weights_dtype,
)
from tests.helpers.distributed import CONFIGS, ROOT


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_deepspeed_configs_accumulate_in_fp32_without_an_optimizer_block(path):
    config = json.loads(path.read_text())
    assert config["data_types"] == {"grad_accum_dtype": "fp32"} and "optimizer" not in config
    check_deepspeed_config(config)
    with pytest.raises(ValueError, match="accumulates gradients in the model dtype"):
        check_deepspeed_config({k: v for k, v in config.items() if k != "data_types"})
    with pytest.raises(ValueError, match="one parameter group"):
        check_deepspeed_config({**config, "optimizer": {"type": "AdamW", "params": {}}})


def test_no_weight_decay_on_norms_biases_and_embeddings(tiny_model_factory):
    model = tiny_model_factory(300, attention_bias=True)
    decayed = set(decay_parameter_names(model))
    for name, parameter in model.named_parameters():
        expected = parameter.ndim == 2 and "embed_tokens" not in name and "norm" not in name
        assert (name in decayed) == expected, name
    assert "lm_head.weight" in decayed and "model.layers.0.self_attn.q_proj.bias" not in decayed


def test_fp32_master_weights_outside_deepspeed():
    outside = dict(trains_all_weights=True, deepspeed=False, bf16=True, fp16=False)
    assert weights_dtype("bfloat16", **outside) == "float32"
    assert weights_dtype("auto", **outside) == "float32"
    assert weights_dtype("bfloat16", **{**outside, "deepspeed": True}) == "bfloat16"  # DeepSpeed keeps fp32 itself
    assert weights_dtype("bfloat16", **{**outside, "trains_all_weights": False}) == "bfloat16"  # LoRA: frozen base
    with pytest.raises(ValueError, match="set bf16: true"):
        weights_dtype("bfloat16", **{**outside, "bf16": False})


def test_a_bf16_recipe_without_deepspeed_loads_fp32_weights_and_trains_under_autocast(tmp_path, monkeypatch):
    from codellama_hf.training.config import config_path, parse_stage_config
    from codellama_hf.training.model import load_tokenizer_and_model

    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    argv = ["--config", str(config_path("code")), "--output_dir", str(tmp_path), "--report_to", "none", "--use_cpu"]
    model_args, _, config = parse_stage_config("code", [*argv, "--dtype", "bfloat16", "--bf16", "true"])
    _, model, _ = load_tokenizer_and_model(model_args, config)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    model_args, _, config = parse_stage_config("code", [*argv, "--dtype", "bfloat16"])
    with pytest.raises(ValueError, match="would train half-precision weights directly"):
        load_tokenizer_and_model(model_args, config)


def test_fsdp_checkpoints_are_sharded_and_the_final_save_is_full():
    from accelerate.utils import FullyShardedDataParallelPlugin

    launch = yaml.safe_load((ROOT / "accelerate_configs" / "fsdp.yaml").read_text())
    assert launch["fsdp_config"]["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, state_dict_type="SHARDED_STATE_DICT")

    class Trainer:  # what gather_full_state_for_final_save reads from transformers' Trainer
        is_fsdp_enabled = True
        accelerator = type("A", (), {"state": type("S", (), {"fsdp_plugin": plugin})})

    gather_full_state_for_final_save(Trainer())
    assert plugin.state_dict_type.name == "FULL_STATE_DICT"


def minimum_gpus_table() -> list[str]:
    """accelerate_configs/README.md's table, recomputed: the smallest GPU count that fits each recipe (ZeRO-3)."""
    from codellama_hf.planner import ModelShape, Setup, plan, stage_defaults

    lines = []
    for size in ("7b", "13b", "34b"):
        for stage in ("code", "python", "lcft", "instruct"):
            recipe = stage_defaults(size, stage)
            cells = []
            for card in (40, 80):
                for gpus in range(1, 1025):
                    setup = Setup(
                        gpus=gpus,
                        gpu_memory_gib=card,
                        seq_len=recipe["seq_len"],
                        tokens_per_step=recipe["tokens_per_step"],
                        checkpointing=bool(recipe.get("activation_checkpointing")),
                        fused_loss=bool(recipe.get("use_liger_kernel")),
                    )
                    try:
                        found = plan(ModelShape.from_size(size), setup)
                    except ValueError:  # the GPU count does not divide the rows per step
                        continue
                    if found.fits:
                        cells.append(f"{gpus} (micro-batch {found.micro_batch}, {found.memory.total / 2**30:.1f} GiB)")
                        break
            lines.append(f"| {size} | {stage} | {recipe['seq_len']:,} tokens | {cells[0]} | {cells[1]} |")
    return lines


def test_launch_guidance_is_the_planners_arithmetic():
    readme = (ROOT / "accelerate_configs" / "README.md").read_text()
    assert "\n".join(minimum_gpus_table()) in readme
