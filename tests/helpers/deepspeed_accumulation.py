"""Gradients after 32 accumulation micro-steps under shipped ZeRO-3 configs (1 process, gloo, bf16), compared with
the fp32 and the bf16 running sums of the same micro-gradients computed by plain PyTorch.

    python tests/helpers/deepspeed_accumulation.py PORT CONFIG.json[:model] ...   # ':model' drops data_types

Prints one JSON object: per case, the relative L2 distance of DeepSpeed's accumulated gradients to each sum.
"""

import copy
import json
import os
import sys

import deepspeed
import torch
from deepspeed.utils import safe_get_full_grad
from transformers import LlamaConfig, LlamaForCausalLM

STEPS, MICRO = 32, 2


def relative(a: dict, b: dict) -> float:
    diff = sum(((a[n].float() - b[n].float()) ** 2).sum() for n in a) ** 0.5
    return float(diff / sum((b[n].float() ** 2).sum() for n in b) ** 0.5)


def main(port: str, cases: list[str]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    deepspeed.init_distributed(dist_backend="gloo")
    torch.manual_seed(0)
    shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=256, num_key_value_heads=2, use_cache=False, **shape))
    model = model.to(torch.bfloat16)
    batches = [torch.randint(0, 256, (MICRO, 32)) for _ in range(STEPS)]
    reference = copy.deepcopy(model)
    sum32 = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in reference.named_parameters()}
    sum16 = {n: torch.zeros_like(p) for n, p in reference.named_parameters()}
    for ids in batches:
        reference.zero_grad()
        (reference(input_ids=ids, labels=ids).loss / STEPS).backward()  # DeepSpeed scales the loss the same way
        for n, p in reference.named_parameters():
            sum32[n] += p.grad.float()
            sum16[n] += p.grad
    results = {}
    for case in cases:
        path, _, accumulate = case.partition(":")
        with open(path) as f:
            config = json.load(f)
        if accumulate == "model":
            config.pop("data_types", None)
        config.update(
            bf16={"enabled": True},
            fp16={"enabled": False},
            gradient_accumulation_steps=STEPS,
            train_micro_batch_size_per_gpu=MICRO,
            train_batch_size=STEPS * MICRO,
            gradient_clipping=0.0,
            zero_allow_untested_optimizer=True,
            zero_force_ds_cpu_optimizer=False,  # no optimizer step is taken: skip compiling CPU Adam
        )
        zero = config["zero_optimization"]
        zero.update(reduce_bucket_size=100_000, stage3_prefetch_bucket_size=100_000)
        zero["stage3_param_persistence_threshold"] = 0
        run = copy.deepcopy(model)
        engine, *_ = deepspeed.initialize(model=run, optimizer=torch.optim.AdamW(run.parameters()), config=config)
        for i, ids in enumerate(batches):
            engine.backward(engine(input_ids=ids, labels=ids).loss)
            if i < STEPS - 1:
                engine.step()  # not a boundary: DeepSpeed only counts the micro-step
        got = {n: safe_get_full_grad(p) for n, p in engine.module.named_parameters()}
        results[case] = {
            "grad_accum_dtype": str(engine.get_data_types()[1]).removeprefix("torch."),
            "vs_fp32_sum": relative(got, sum32),
            "vs_bf16_sum": relative(got, sum16),
        }
        engine.destroy()
    results["bf16_sum_vs_fp32_sum"] = relative(sum16, sum32)
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
