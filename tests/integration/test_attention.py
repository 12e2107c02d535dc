"""Packed documents stay apart on every attention backend at micro-batch > 1: logits of packed rows equal each
document run by itself (through sdpa) within 1e-5. flash-attention runs transformers' own integration on
plain-torch kernels (codellama_hf.attention.flash_attention_emulation); flex_attention runs PyTorch's kernel on CPU."""

import pytest
import torch
from transformers.masking_utils import create_causal_mask

from codellama_hf.attention import (
    check_packed_batch,
    flash_attention_emulation,
)
from codellama_hf.data.packing import PackedCollator
from codellama_hf.training.config import config_path, read_config_file
from tests.helpers.attention import _max_error_vs_documents_alone, _model, _packed_rows


@pytest.mark.slow
def test_flash_varlen_at_the_7b_and_13b_shape(tiny_tokenizer):
    """7B code stage: micro-batch 4 of 4,096 tokens (13B uses 2) with attn_implementation flash_attention_2."""
    recipe = read_config_file(config_path("code", "7b"))
    seq_len, micro_batch = recipe["seq_len"], recipe["per_device_train_batch_size"]
    assert (seq_len, micro_batch) == (4096, 4)
    assert read_config_file(config_path("code", "13b"))["per_device_train_batch_size"] <= micro_batch
    rows = _packed_rows(tiny_tokenizer, seq_len=seq_len, rows=micro_batch, doc_tokens=1500)
    reference = _model(len(tiny_tokenizer), "sdpa")
    with flash_attention_emulation() as flash:
        batch = PackedCollator(flash)(rows)
        check_packed_batch(batch, flash)
        error = _max_error_vs_documents_alone(_model(len(tiny_tokenizer), flash), reference, batch, rows)
    assert error < 1e-5


@pytest.mark.slow  # PyTorch compiles the flex kernel and the block mask for the CPU first
def test_flex_attention_keeps_documents_apart_and_skips_blocks(tiny_tokenizer):
    rows = _packed_rows(tiny_tokenizer, seq_len=512, rows=2, doc_tokens=200)
    batch = PackedCollator("flex_attention")(rows)
    assert set(batch) == {"input_ids", "labels", "position_ids"}  # flex derives its BlockMask from position_ids
    model = _model(len(tiny_tokenizer), "flex_attention")
    assert _max_error_vs_documents_alone(model, _model(len(tiny_tokenizer), "sdpa"), batch, rows) < 1e-5
    # The BlockMask transformers builds from these position_ids computes fewer blocks than a causal mask would.
    embeds = torch.zeros(2, 512, model.config.hidden_size)
    document = create_causal_mask(model.config, embeds, None, None, position_ids=batch["position_ids"])
    causal = create_causal_mask(model.config, embeds, None, None, position_ids=torch.arange(512).expand(2, -1))

    def blocks(mask):
        return int(mask.kv_num_blocks.sum() + mask.full_kv_num_blocks.sum())

    assert blocks(document) < blocks(causal)
