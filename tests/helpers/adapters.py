"""Shared by the adapters tests: fixtures and helpers."""

from __future__ import annotations

import shutil

import pytest
import torch


@pytest.fixture(scope="module")
def base_dirs(tmp_path_factory, tiny_tokenizer_dir):
    """Two tiny pretrained-looking folders (different weights, same shapes; bitsandbytes-friendly FFN size)."""
    from transformers import LlamaForCausalLM

    from codellama_hf.models import llama_config

    root = tmp_path_factory.mktemp("bases")
    out = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        folder = root / f"base{seed}"
        LlamaForCausalLM(llama_config("tiny", vocab_size=4016, intermediate_size=384)).save_pretrained(folder)
        for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
            shutil.copyfile(tiny_tokenizer_dir / name, folder / name)
        out.append(folder)
    return out


@pytest.fixture(scope="module")
def tied_base_dir(tmp_path_factory, tiny_tokenizer_dir):
    """A tiny pretrained-looking folder with tied input/output embeddings (SmolLM2's layout)."""
    from transformers import LlamaForCausalLM

    from codellama_hf.models import llama_config

    folder = tmp_path_factory.mktemp("tied") / "base"
    torch.manual_seed(2)
    LlamaForCausalLM(
        llama_config("tiny", vocab_size=4016, intermediate_size=384, tie_word_embeddings=True)
    ).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(tiny_tokenizer_dir / name, folder / name)
    return folder
