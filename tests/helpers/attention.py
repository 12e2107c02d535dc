"""Shared by the attention tests: helpers."""

from __future__ import annotations

import torch
from transformers import LlamaForCausalLM

from codellama_hf.data.fim import FIMConfig, tokenize_documents
from codellama_hf.data.packing import pack
from codellama_hf.models import llama_config
from tests.helpers.tokenizer import code_documents


def _model(vocab_size: int, implementation: str, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(
        llama_config("tiny", vocab_size=vocab_size, attn_implementation=implementation, use_cache=False)
    ).eval()


def _packed_rows(tokenizer, *, seq_len: int, rows: int, doc_tokens: int | None = None) -> list[dict]:
    """The stages' rows: real code, FIM-transformed, packed by best fit; the first `rows` of them."""
    docs = code_documents(160)
    samples = tokenize_documents(docs, None, tokenizer, seq_len=seq_len, fim=FIMConfig(seed=3)).input_ids
    if doc_tokens:
        samples = [s[:doc_tokens] for s in samples]
    packed, lengths = pack(samples, seq_len, tokenizer.eos_token_id)
    several = [{"input_ids": r, "seq_lengths": n} for r, n in zip(packed, lengths, strict=False) if len(n) > 1]
    assert len(several) >= rows
    return several[:rows]


def _max_error_vs_documents_alone(model, reference, batch, rows) -> float:
    """Largest |logit difference| between the packed batch and each document run alone through `reference`."""
    with torch.no_grad():
        packed = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        worst = 0.0
        for b, row in enumerate(rows):
            start = 0
            for n in row["seq_lengths"]:
                alone = reference(input_ids=batch["input_ids"][b : b + 1, start : start + n]).logits[0]
                worst = max(worst, (packed[b, start : start + n] - alone).abs().max().item())
                start += n
    return worst
