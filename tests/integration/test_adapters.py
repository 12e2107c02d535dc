"""LoRA / QLoRA (codellama_hf.adapters): options, a QLoRA step on CPU, merge-and-save, the base check."""

from __future__ import annotations

import json

import pytest
import torch

from codellama_hf.adapters import (
    METADATA_FILE,
)


@pytest.mark.slow
def test_a_stage_recipe_trains_qlora_and_saves_adapter_and_merged_model(base_dirs, tmp_path):
    """recipes/lcft.py with use_peft + load_in_4bit: adapter in output_dir/adapter, merged plain model beside it.

    (lcft, not python: the tiny bases carry the infilling pieces, which the python stage refuses.)"""
    import os
    import subprocess
    import sys

    from transformers import AutoModelForCausalLM

    from codellama_hf.models import rope_theta
    from tests.helpers import ROOT

    out = tmp_path / "lcft-qlora"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "recipes" / "lcft.py"),
            "--model_name_or_path",
            str(base_dirs[0]),
            "--output_dir",
            str(out),
            "--use_peft",
            "true",
            "--load_in_4bit",
            "true",
            "--lora_r",
            "4",
            "--seq_len",
            "128",
            "--tokens_per_step",
            "256",
            "--max_steps",
            "3",
            "--report_to",
            "none",
            "--rope_theta",
            "1000000",
            "--save_steps",
            "100",
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    adapter = json.loads((out / "adapter" / METADATA_FILE).read_text())
    assert adapter["quantization"] == "4bit" and adapter["lora"]["r"] == 4
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["stage"] == "lcft" and lineage["adapter"]["quantization"] == "4bit"
    assert lineage["adapter"]["merged_from"] == str(out / "adapter")  # the final folder, not the temporary one
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert rope_theta(merged.config) == 1e6  # the theta trained with, not the base's
    base = AutoModelForCausalLM.from_pretrained(base_dirs[0])
    q_merged = merged.model.layers[0].self_attn.q_proj.weight
    assert not torch.equal(q_merged, base.model.layers[0].self_attn.q_proj.weight)  # the update is in the weights
    assert torch.equal(merged.model.embed_tokens.weight, base.model.embed_tokens.weight)  # LoRA left them alone


@pytest.mark.slow
def test_a_code_stage_growing_the_vocabulary_saves_small_adapters_and_merges(tmp_path, tiny_tokenizer_dir):
    """recipes/code.py with use_peft on a 4,000-row base and the 4,016-token tokenizer (Llama 2 -> Code Llama):
    the final adapter and every checkpoint hold only the 16 new rows beside LoRA, and the merged model has them."""
    import os
    import subprocess
    import sys

    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    from codellama_hf.models import llama_config
    from tests.helpers import ROOT

    torch.manual_seed(0)
    base_dir = tmp_path / "base"
    LlamaForCausalLM(llama_config("tiny", vocab_size=4000)).save_pretrained(base_dir)
    out = tmp_path / "code-lora"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "recipes" / "code.py"),
            *("--model_name_or_path", str(base_dir), "--tokenizer_name_or_path", str(tiny_tokenizer_dir)),
            *("--resize_token_embeddings", "true", "--use_peft", "true", "--lora_r", "4"),
            *("--output_dir", str(out), "--seq_len", "128", "--tokens_per_step", "256"),
            *("--max_steps", "2", "--save_steps", "1", "--report_to", "none"),
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for folder in (out / "adapter", out / "checkpoint-1", out / "checkpoint-2"):
        with safe_open(str(folder / "adapter_model.safetensors"), "pt") as saved:
            shapes = {k: saved.get_slice(k).get_shape() for k in saved.keys() if "lora_" not in k}
        assert sorted(shapes) == [
            "base_model.model.lm_head.token_adapter.trainable_tokens_delta",
            "base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta",
        ]
        assert all(shape == [16, 128] for shape in shapes.values())
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["adapter"]["lora"]["trained_rows"] == {"embed_tokens": [4000, 4015], "lm_head": [4000, 4015]}
    assert lineage["adapter"]["size_bytes"] == (out / "adapter" / "adapter_model.safetensors").stat().st_size
    merged, base = AutoModelForCausalLM.from_pretrained(out), AutoModelForCausalLM.from_pretrained(base_dir)
    assert merged.get_input_embeddings().num_embeddings == 4016
    assert torch.equal(merged.model.embed_tokens.weight[:4000], base.model.embed_tokens.weight)
    with safe_open(str(out / "adapter" / "adapter_model.safetensors"), "pt") as saved:
        head = saved.get_tensor("base_model.model.lm_head.token_adapter.trainable_tokens_delta")
    assert torch.equal(merged.lm_head.weight[4000:], head.to(merged.lm_head.weight.dtype))  # the trained rows


@pytest.mark.slow
def test_lora_on_the_real_smollm2_gaining_fim_tokens_merges_to_the_adapted_model(tmp_path):
    """SmolLM2-135M (the registry asset) + `--add-fim` (49,152 -> 49,156, tied embeddings): LoRA with the 4 new rows
    trains, the adapter holds 4 rows beside LoRA, and the merged model's logits equal the adapted model's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from codellama_hf.adapters import AdapterArguments, adapter_size, apply_adapters, merge_and_save, save_adapter
    from codellama_hf.assets import smollm2_dir
    from codellama_hf.tokenizer import infilling_prompt
    from codellama_hf.tokenizer.bpe import add_fim_tokens_to_folder

    base = smollm2_dir()
    tokenizer_dir, ids = add_fim_tokens_to_folder(base, tmp_path / "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    peft_model = apply_adapters(
        model, AdapterArguments(use_peft=True, lora_r=8, lora_dropout=0.0, lora_target_modules=["q_proj", "v_proj"])
    )
    prompt = infilling_prompt(tokenizer, "def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n")
    batch = torch.tensor([prompt + tokenizer("a + b", add_special_tokens=False).input_ids + [ids[3]]])
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(3):
        loss = peft_model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    adapter_dir = save_adapter(peft_model, tmp_path / "adapter", tokenizer)
    lora = 30 * 2 * 8 * (576 + 576) + 30 * 8 * (576 + 192)  # q: 576 -> 576, v: 576 -> 192 (3 KV heads of 64)
    assert adapter_size(adapter_dir) < (lora + 4 * 576) * 4 + 20_000  # fp32 LoRA + 4 rows + header
    merged = AutoModelForCausalLM.from_pretrained(merge_and_save(adapter_dir, tmp_path / "merged")).eval()
    assert merged.config.vocab_size == 49156 and merged.config.tie_word_embeddings
    with torch.no_grad():
        torch.testing.assert_close(merged(batch).logits, peft_model.eval()(input_ids=batch).logits, atol=1e-4, rtol=0)
