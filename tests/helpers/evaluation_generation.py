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


def constant_model(model_factory, vocab_size: int, token_id: int):
    """A tiny Llama whose every prediction is `token_id` (a biased zero lm_head), counting its forward calls."""
    model = model_factory(vocab_size)
    head = torch.nn.Linear(model.config.hidden_size, vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[token_id] = 10.0
    model.lm_head = head
    model.calls = []
    model.register_forward_pre_hook(
        lambda module, args, kwargs: model.calls.append(kwargs["input_ids"].clone()), with_kwargs=True
    )
    return model
