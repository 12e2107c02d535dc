"""On one GPU: LoRA on a growing vocabulary under DeepSpeed ZeRO-3 (peft gathers the trainable rows with a CUDA
broadcast, which the CPU tier cannot run), through the real code recipe and `accelerate launch`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def test_zero3_lora_trains_and_saves_only_the_new_rows(tmp_path, tiny_tokenizer_dir):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    from codellama_hf.models import llama_config

    torch.manual_seed(0)
    base = tmp_path / "base"
    LlamaForCausalLM(llama_config("tiny", vocab_size=4000)).save_pretrained(base)
    out = tmp_path / "code-lora"
    command = [
        sys.executable,
        *("-m", "accelerate.commands.launch", "--num_processes", "1", "--use_deepspeed"),
        *("--deepspeed_config_file", str(ROOT / "deepspeed_configs" / "zero3.json"), "--zero3_init_flag", "true"),
        str(ROOT / "recipes" / "code.py"),
        *("--model_name_or_path", str(base), "--tokenizer_name_or_path", str(tiny_tokenizer_dir)),
        *("--resize_token_embeddings", "true", "--use_peft", "true", "--lora_r", "4"),
        *("--output_dir", str(out), "--max_steps", "2", "--save_steps", "1", "--tokens_per_step", "4096"),
        *("--bf16", "true", "--report_to", "none"),
    ]
    done = subprocess.run(
        command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=1200
    )
    assert done.returncode == 0, done.stderr[-4000:]
    with safe_open(str(out / "adapter" / "adapter_model.safetensors"), "pt") as saved:
        rows = {k: saved.get_slice(k).get_shape() for k in saved.keys() if "lora_" not in k}
    assert sorted(rows.values()) == [[16, 128], [16, 128]]
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["adapter"]["lora"]["trained_rows"] == {"embed_tokens": [4000, 4015], "lm_head": [4000, 4015]}
    assert AutoModelForCausalLM.from_pretrained(out).get_input_embeddings().num_embeddings == 4016
