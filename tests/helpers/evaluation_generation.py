"""Shared by the evaluation_generation tests: fixtures and helpers."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def tiny_model(tiny_tokenizer):
    from transformers import LlamaForCausalLM

    from codellama_hf.models import llama_config

    torch.manual_seed(0)
    return LlamaForCausalLM(llama_config("tiny", vocab_size=len(tiny_tokenizer))).eval()
