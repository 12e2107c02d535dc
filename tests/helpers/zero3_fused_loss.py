"""Worker for test_speed.py: Liger's fused-linear loss path under DeepSpeed ZeRO-3, 2 CPU processes (gloo).

Liger's `lce_forward` (the real one, patched into LlamaForCausalLM) reads `lm_head.weight` itself; only the Triton
kernel is replaced by a plain-torch function with the same arguments and result, since Triton has no CPU driver.
Two runs from the same initial weights, same rows: the unfused loss, and the fused loss after
`speed.register_lm_head_with_causal_lm` (the weight is an empty ZeRO-3 partition outside lm_head's forward).

    DS_ACCELERATOR=cpu torchrun --nproc_per_node 2 tests/helpers/zero3_fused_loss.py OUT.json
"""

import json
import sys

import deepspeed
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM
from transformers.integrations import HfDeepSpeedConfig

from codellama_hf.data.packing import PackedCollator
from codellama_hf.models import llama_config
from codellama_hf.speed import register_lm_head_with_causal_lm

DS_CONFIG = {
    "train_micro_batch_size_per_gpu": 1,
    "gradient_accumulation_steps": 1,
    "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
    "steps_per_print": 10**9,
    "zero_allow_untested_optimizer": True,  # plain torch SGD: exact, no optimizer state to compare
}


def torch_fused_linear_cross_entropy(input, weight, target, bias=None, ignore_index=-100, reduction="mean", **_):
    """Liger's fused linear cross-entropy in plain torch: logits chunk by chunk, never all of them at once."""
    total = input.new_zeros((), dtype=torch.float32)
    for rows in torch.arange(input.shape[0]).split(16):
        logits = (input[rows] @ weight.t()).float()
        total = total + F.cross_entropy(logits, target[rows], ignore_index=ignore_index, reduction="sum")
    if reduction == "mean":
        total = total / (target != ignore_index).sum()
    return total


def run(fused: bool, register: bool) -> dict:
    zero3 = HfDeepSpeedConfig(DS_CONFIG)  # while it lives, from_config builds the model partitioned (zero.Init)
    torch.manual_seed(0)
    config = llama_config("tiny", vocab_size=256, num_hidden_layers=2)
    config.use_cache = False
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    if fused:
        import liger_kernel.transformers.functional as liger_functional
        from liger_kernel.transformers import apply_liger_kernel_to_llama

        liger_functional.liger_fused_linear_cross_entropy = torch_fused_linear_cross_entropy
        apply_liger_kernel_to_llama(rope=False, rms_norm=False, swiglu=False, model=model)
    if register:
        assert register_lm_head_with_causal_lm(model)
        assert id(model.lm_head.weight) in model._external_params  # gathered with the causal LM's forward
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.5), config=DS_CONFIG
    )
    engine.train()
    del zero3
    row = {"input_ids": (torch.arange(64) * 7 % 250 + 3).tolist(), "seq_lengths": [20, 30, 14]}
    batch = PackedCollator()([row])
    losses = []
    try:
        for _ in range(2):
            loss = engine(**batch).loss
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())
    except RuntimeError as err:
        return {"error": str(err)[:200]}
    with deepspeed.zero.GatheredParameters([model.lm_head.weight]):
        checksum = model.lm_head.weight.double().pow(2).sum().item()
    return {"losses": losses, "lm_head": checksum}


def main() -> None:
    deepspeed.init_distributed(dist_backend="gloo")
    results = {
        "unfused": run(fused=False, register=False),
        "fused": run(fused=True, register=True),
    }
    if torch.distributed.get_rank() == 0:
        with open(sys.argv[1], "w") as handle:
            json.dump(results, handle)


if __name__ == "__main__":
    main()
