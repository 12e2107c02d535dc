"""One ZeRO-3 step of the stage Trainer under a shipped DeepSpeed config (1 process, gloo); prints, as JSON, the
optimizer class and the parameter names of every group DeepSpeed trains, with the group's weight decay.

    python tests/helpers/deepspeed_groups.py PORT CONFIG.json OUTPUT_DIR
"""

import json
import os
import sys


def main(port: str, config: str, output_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    import torch
    from accelerate import PartialState
    from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

    from codellama_hf.training.trainer import StageTrainer

    PartialState(backend="gloo")  # what StageConfig does for DeepSpeed without CUDA
    args = TrainingArguments(
        output_dir=output_dir,
        deepspeed=config,
        max_steps=1,
        per_device_train_batch_size=2,
        weight_decay=0.1,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        accelerator_config={"use_configured_state": True},
    )
    shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=256, num_key_value_heads=2, use_cache=False, **shape))
    names = {id(p): n for n, p in model.named_parameters()}
    rows = [torch.randint(0, 256, (32,)) for _ in range(2)]

    def collate(batch):
        ids = torch.stack(batch)
        return {"input_ids": ids, "labels": ids}

    trainer = StageTrainer(model=model, args=args, train_dataset=rows, data_collator=collate)
    trainer.train()
    zero = trainer.model_wrapped.optimizer  # DeepSpeedZeroOptimizer_Stage3; its groups hold the model's params
    groups = [
        {"weight_decay": group["weight_decay"], "params": sorted(names[id(p)] for p in params)}
        for group, params in zip(zero.optimizer.param_groups, zero.fp16_groups, strict=True)
    ]
    print(json.dumps({"optimizer": type(zero.optimizer).__name__, "groups": groups}))


if __name__ == "__main__":
    main(*sys.argv[1:])
