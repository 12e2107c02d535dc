"""A stage's speed options, checked and wired before the model is loaded: Liger kernels, sequence parallelism, plan.

- `use_liger_kernel` (TrainingArguments): Liger's Triton kernels for RMSNorm, RoPE, SwiGLU and the fused linear
  cross-entropy, which never materialises the 32k-vocabulary logits (Hsu et al. 2024, arXiv 2410.10989). Triton
  needs a GPU: on a machine without CUDA this is refused up front. Under ZeRO-3 the fused loss reads
  `lm_head.weight` outside `lm_head.forward`, where DeepSpeed has not gathered it (an empty partition); it is
  registered as an external parameter of the causal-LM module, DeepSpeed's own mechanism for a weight used by
  another module's forward, so it is gathered for the loss and its gradient reduced as usual (recent DeepSpeed,
  0.19.8 here, also catches such a read in its parameter getter; the registration does not depend on it).
- `torch_compile` (TrainingArguments): compiled forward and backward; equal losses are tested on CPU.
- `sequence_parallel_size` (StageConfig): Ulysses through accelerate's ParallelismConfig and DeepSpeed
  (codellama_hf.parallel); checked against the model's heads and the launch before the weights are read.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

LIGER_INSTALL = "pip install 'codellama_hf[liger]'"


def check_liger(enabled: bool) -> None:
    """Refuse use_liger_kernel where its kernels cannot run, with what to do instead."""
    if not enabled:
        return
    # The GPU first: on a CPU, installing liger-kernel would not help.
    if not torch.cuda.is_available():
        raise ValueError(
            "use_liger_kernel: true needs a CUDA GPU: Liger's kernels are written in Triton, which has no CPU "
            "driver. Set use_liger_kernel: false on this machine (the unfused path computes the same loss)"
        )
    if importlib.util.find_spec("liger_kernel") is None:
        raise ValueError(f"use_liger_kernel: true needs liger-kernel ({LIGER_INSTALL})")


def model_shape_before_loading(model_args):
    """The model's head counts and shape, from its config.json or the random-init preset (no weights read)."""
    from transformers import AutoConfig

    from codellama_hf.planner import ModelShape

    source = model_args.model_name_or_path
    if source is None or (model_args.init_model_size is not None and not (Path(source) / "config.json").is_file()):
        # a random-init run (the loader's rule): asking AutoConfig would only retry the Hub for a missing model
        return None if model_args.init_model_size is None else ModelShape.from_size(model_args.init_model_size)
    try:
        return ModelShape.from_config(AutoConfig.from_pretrained(source))
    except (OSError, TypeError, ValueError):
        if model_args.init_model_size is not None:
            return ModelShape.from_size(model_args.init_model_size)
        return None  # the model loader reports the missing model in its own words


def prepare(model_args, config) -> None:
    """Check and wire the speed options of a parsed stage; runs before any model weights are loaded.

    A plan_only preview checks the sequence-parallel split but not the Liger device (it may run on a laptop).
    """
    if not config.plan_only:
        check_liger(config.use_liger_kernel)
    sp = getattr(config, "sequence_parallel_size", 1)
    shape = model_shape_before_loading(model_args)
    if sp > 1:
        from codellama_hf.parallel import check_sequence_parallel, parallelism_config

        if shape is not None:
            check_sequence_parallel(
                sp,
                world_size=config.plan.world_size,
                num_heads=shape.heads,
                num_kv_heads=shape.kv_heads,
                seq_len=config.seq_len,
            )
        if model_args.attn_implementation not in ("sdpa", "flash_attention_2", "flash_attention_3"):
            raise ValueError(
                f"sequence_parallel_size={sp} with attn_implementation={model_args.attn_implementation!r}: "
                "Ulysses runs sdpa, flash_attention_2 or flash_attention_3 on the gathered sequence"
            )
        if not (config.deepspeed or _accelerate_uses_deepspeed() or config.plan_only):
            raise ValueError(
                f"sequence_parallel_size={sp} runs through DeepSpeed (Ulysses): launch with a DeepSpeed config, "
                "e.g. accelerate launch --config_file accelerate_configs/zero3.yaml"
            )
        config.parallelism_config = parallelism_config(
            sp, config.plan.world_size // sp, model_args.attn_implementation
        )
    if not config.plan_only and (warning := warn_if_it_cannot_fit(shape, model_args, config)):
        from accelerate import PartialState

        if PartialState().is_main_process:
            print(warning)


def _accelerate_uses_deepspeed() -> bool:
    import os

    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true", "yes")


def _setup(model_args, config, bf16: bool):
    """The planner's Setup of this very run: this launch, its ZeRO stage, micro-batch and switches."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    from codellama_hf.planner import Setup, attention_kind

    return Setup(
        gpus=config.plan.world_size,
        gpu_memory_gib=torch.cuda.get_device_properties(0).total_memory / 2**30 if torch.cuda.is_available() else 0,
        seq_len=config.seq_len,
        tokens_per_step=config.tokens_per_step,
        zero_stage=3 if is_deepspeed_zero3_enabled() else 0,
        sequence_parallel=getattr(config, "sequence_parallel_size", 1),
        checkpointing=bool(config.gradient_checkpointing),
        fused_loss=bool(config.use_liger_kernel),
        attention=attention_kind(model_args.attn_implementation),
        bf16=bf16,
        micro_batch=config.per_device_train_batch_size,
    )


def memory_plan(model, model_args, config):
    """(setup, memory) of the planner for this run and its loaded model.

    The GPU's memory is read from the device; on a machine without CUDA the estimate is per process (no fit check).
    """
    from codellama_hf.planner import ModelShape, memory

    setup = _setup(model_args, config, bool(config.bf16) or model.dtype == torch.bfloat16)
    return setup, memory(ModelShape.from_config(model.config), setup, config.per_device_train_batch_size)


def warn_if_it_cannot_fit(shape, model_args, config) -> str | None:
    """On a GPU, before the weights are read: the planner's verdict when this run is not expected to fit, naming the
    smallest change that does (a warning: the estimate is deliberately on the high side)."""
    from codellama_hf.planner import plan

    if shape is None or not torch.cuda.is_available():
        return None
    setup = _setup(model_args, config, bool(config.bf16) or model_args.dtype == "bfloat16")
    try:
        result = plan(shape, setup)
    except ValueError:
        return None
    if result.fits:
        return None
    change = f"; smallest change that fits: {result.change}" if result.change else ""
    return (
        f"memory plan: per_device_train_batch_size={setup.micro_batch} at seq_len={setup.seq_len} needs about "
        f"{result.memory.total / 2**30:.1f} GiB per GPU, more than this GPU offers{change} (codellama-hf plan)"
    )


def register_fused_loss_weight(model, config) -> bool:
    """Under ZeRO-3 with Liger's fused loss, have DeepSpeed gather lm_head.weight for the causal-LM forward.

    Returns whether it registered anything. Idempotent; harmless when the weight is not partitioned.
    """
    from transformers.integrations import is_deepspeed_zero3_enabled

    if not (config.use_liger_kernel and is_deepspeed_zero3_enabled()):
        return False
    return register_lm_head_with_causal_lm(model)


def register_lm_head_with_causal_lm(model) -> bool:
    """deepspeed.zero.register_external_parameter(causal LM, lm_head.weight), through PEFT wrappers."""
    import deepspeed

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings()
    weight = getattr(head, "weight", None)
    if weight is None or not hasattr(weight, "ds_id"):
        return False
    deepspeed.zero.register_external_parameter(base, weight)
    return True


def describe_memory_plan(setup, estimate) -> str:
    """One line for the run's log: the estimate by part, and whether it fits this GPU."""
    from codellama_hf.planner import usable_bytes

    parts = ", ".join(f"{k} {v:.2f}" for k, v in estimate.gib().items() if k not in ("step", "total"))
    where = "per process (no GPU)"
    if setup.gpu_memory_gib:
        usable = usable_bytes(setup.gpu_memory_gib)
        verdict = "fits" if estimate.total <= usable else "DOES NOT FIT; see codellama-hf plan for the smallest change"
        where = f"per GPU, {usable / 2**30:.1f} GiB usable: {verdict}"
    return f"memory plan: {estimate.total / 2**30:.2f} GiB {where} ({parts}; codellama-hf plan)"
