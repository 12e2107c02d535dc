"""Precision and optimizer settings every launch configuration must agree on, so a recipe trains the same way on
one GPU, DDP, FSDP or ZeRO-3 (process setup itself is training/distributed.py).

- Weights: the optimizer must update an fp32 master copy. DeepSpeed keeps one itself (bf16 compute, fp32 optimizer
  partitions); outside DeepSpeed the model is loaded in fp32 and bf16 runs under autocast (`weights_dtype`).
- Gradients: summed over 16-128 micro-steps per update in the paper's token batches, so they accumulate in fp32
  (`data_types.grad_accum_dtype` in deepspeed_configs/*.json; `check_deepspeed_config` refuses a file without it).
- Parameter groups: AdamW's weight decay applies to matrices only, never to norms, biases or embeddings
  (`decay_parameter_names`), whichever launch file builds the optimizer. DeepSpeed's own `optimizer` block would
  build one group for everything, so neither JSON file has one; with optimizer offload the Trainer builds
  DeepSpeed's CPU Adam itself, over the same groups (`optimizer_class_and_kwargs`).
- Checkpoints: FSDP saves sharded state at every checkpoint and gathers a full state dict only for the final model
  (`gather_full_state_for_final_save`). (Both rope keys in every checkpoint's config.json: export's
  `complete_checkpoint_callback`.)
"""

from __future__ import annotations

import os

import torch

ACCUMULATION_DTYPES = ("fp32", "float32")


def uses_deepspeed(config) -> bool:
    """Whether this run trains under DeepSpeed (a --deepspeed file, or accelerate launch with a DeepSpeed config)."""
    return bool(config.deepspeed) or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true", "yes")


def weights_dtype(requested: str, *, trains_all_weights: bool, deepspeed: bool, bf16: bool, fp16: bool) -> str:
    """The dtype to load trainable weights in: fp32 master weights outside DeepSpeed.

    AdamW applied to bf16 weights rounds away updates smaller than 1/256 of a weight (bf16 has 8 significant
    bits), which is most of them late in a cosine schedule. DeepSpeed keeps fp32 master partitions itself; single
    GPU, DDP and FSDP update whatever the model was loaded in, so they load fp32 and compute in bf16 under autocast
    (TrainingArguments.bf16). Adapters (LoRA/QLoRA) train fp32 adapter weights on a frozen base: unchanged.
    """
    if deepspeed or not trains_all_weights or requested == "float32":
        return requested
    if not (bf16 or fp16) and requested != "auto":
        raise ValueError(
            f"dtype={requested} with bf16 and fp16 off would train half-precision weights directly (AdamW updates "
            "below 1/256 of a weight are lost); set bf16: true (fp32 master weights, bf16 autocast) or dtype: "
            "float32"
        )
    return "float32"  # "auto" without bf16/fp16: train in fp32 whatever the checkpoint was saved in


def check_deepspeed_config(deepspeed_config: dict) -> None:
    """Refuse DeepSpeed settings that silently train differently from the shipped files."""
    if deepspeed_config.get("bf16", {}).get("enabled") in (True, "auto") or deepspeed_config.get("fp16", {}).get(
        "enabled"
    ) in (True, "auto"):
        accumulate = str(deepspeed_config.get("data_types", {}).get("grad_accum_dtype", "the model dtype"))
        if accumulate.lower() not in ACCUMULATION_DTYPES:
            raise ValueError(
                f"the DeepSpeed config accumulates gradients in {accumulate} (data_types.grad_accum_dtype): "
                "summing 16-128 micro-steps in bf16 loses their small contributions; set "
                '"data_types": {"grad_accum_dtype": "fp32"} (deepspeed_configs/zero3.json does)'
            )
    if "optimizer" in deepspeed_config:
        raise ValueError(
            "the DeepSpeed config has an optimizer block: DeepSpeed then builds AdamW over one parameter group "
            "and decays norms, biases and embeddings; leave it out (the Trainer builds the optimizer, DeepSpeed's "
            "CPU Adam when the optimizer is offloaded)"
        )


def decay_parameter_names(model: torch.nn.Module) -> list[str]:
    """Names of the parameters AdamW decays: weight matrices, not norms, biases or embeddings (as in GPT-2/Llama
    training codebases: decay only the >= 2-D weights that multiply activations)."""
    embeddings = {id(m) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    skip = set()
    for module in model.modules():
        if id(module) in embeddings or "norm" in type(module).__name__.lower():
            skip.update(id(p) for p in module.parameters(recurse=False))
    return [
        name
        for name, p in model.named_parameters()
        if id(p) not in skip and not name.endswith("bias") and len(getattr(p, "ds_shape", p.shape)) >= 2
    ]


def offloads_optimizer(deepspeed_config: dict | None) -> bool:
    zero = (deepspeed_config or {}).get("zero_optimization", {})
    return (zero.get("offload_optimizer") or {}).get("device", "none") in ("cpu", "nvme")


def optimizer_class_and_kwargs(args, deepspeed_config: dict | None):
    """(class, kwargs) for the Trainer's `optimizer_cls_and_kwargs`: DeepSpeed's CPU Adam (AdamW mode) when the
    optimizer lives in CPU memory (ZeRO-Offload needs it), else None for the Trainer's own AdamW. The Trainer
    passes it the same two parameter groups either way."""
    if not offloads_optimizer(deepspeed_config):
        return None
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    return DeepSpeedCPUAdam, {
        "lr": args.learning_rate,
        "betas": (args.adam_beta1, args.adam_beta2),
        "eps": args.adam_epsilon,
        "adamw_mode": True,
    }


def gather_full_state_for_final_save(trainer) -> None:
    """FSDP trains and checkpoints with sharded state dicts; the final model is gathered in full, once, so the
    output is a plain Hugging Face folder (accelerate's documented 'train sharded, save full' switch)."""
    if getattr(trainer, "is_fsdp_enabled", False):
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")


class OptimizerGroupsMixin:
    """Trainer mix-in: the same parameter groups under every launch file, and DeepSpeed's CPU Adam over them when
    ZeRO offloads the optimizer."""

    def get_decay_parameter_names(self, model) -> list[str]:
        return decay_parameter_names(model)

    def create_optimizer(self, model=None):
        if self.optimizer is None and self.optimizer_cls_and_kwargs is None and self.is_deepspeed_enabled:
            plugin = self.accelerator.state.deepspeed_plugin
            self.optimizer_cls_and_kwargs = optimizer_class_and_kwargs(self.args, plugin.deepspeed_config)
        return super().create_optimizer(model)
