"""Worker for test_speed.py: the lcft recipe (run_stage) under `accelerate launch`, with Ulysses' exchanges counted.

Wraps `torch.distributed.all_to_all_single` (what DeepSpeed's Ulysses attention calls) and records the attention
implementation the model trains with, then writes both as JSON from rank 0.

    accelerate launch --config_file accelerate_configs/cpu_zero3.yaml tests/helpers/sequence_parallel_stage.py \\
        OUT.json RECIPE-ARGS...
"""

import json
import sys

import torch
import torch.distributed as dist
from transformers import Trainer

from codellama_hf.training import run_stage
from codellama_hf.training.config import config_path

seen = {"all_to_all": 0, "attention": set()}
_all_to_all = dist.all_to_all_single


def counting_all_to_all(*args, **kwargs):
    seen["all_to_all"] += 1
    return _all_to_all(*args, **kwargs)


dist.all_to_all_single = counting_all_to_all
_training_step = Trainer.training_step


def recording_training_step(self, model, inputs, *args, **kwargs):
    seen["attention"].add(self.accelerator.unwrap_model(model).config._attn_implementation)
    seen["position_ids"] = inputs["position_ids"].shape[-1]  # this process' shard of the row
    return _training_step(self, model, inputs, *args, **kwargs)


Trainer.training_step = recording_training_step


def main(out: str, argv: list[str]) -> None:
    run_stage("lcft", default_config=config_path("lcft"), argv=argv)
    if dist.get_rank() == 0:
        with open(out, "w") as handle:
            json.dump({**seen, "attention": sorted(seen["attention"]), "torch": torch.__version__}, handle)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
