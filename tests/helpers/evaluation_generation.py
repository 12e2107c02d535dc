"""The tiny random Llama shared by the generation, evaluation and cross-file tests, as a model and as a folder."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def tiny_model(tiny_tokenizer):
    from transformers import LlamaForCausalLM

    from codellama_hf.models import llama_config

    torch.manual_seed(0)
    return LlamaForCausalLM(llama_config("tiny", vocab_size=len(tiny_tokenizer))).eval()


@pytest.fixture
def tiny_model_dir(tmp_path, tiny_model, tiny_tokenizer_dir):
    """`tiny_model` saved with the tiny tokenizer's files: a model folder the CLI can load."""
    import shutil

    folder = tmp_path / "tiny-model"
    tiny_model.save_pretrained(folder)
    for name in tiny_tokenizer_dir.iterdir():
        shutil.copy(name, folder / name.name)
    return folder
