"""On a GPU, in bf16: the packed loss of every backend equals the documents run alone, at micro-batch 2 and 4."""

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM

from codellama_hf.attention import check_packed_batch
from codellama_hf.data.fim import FIMConfig, tokenize_documents
from codellama_hf.data.packing import PackedCollator, pack
from codellama_hf.models import llama_config
from tests.helpers.tokenizer import code_documents

BACKENDS = [
    pytest.param(
        "flash_attention_2",
        marks=pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None, reason="flash-attn not installed"),
    ),
    "flex_attention",
    "sdpa",
]


@pytest.mark.parametrize("micro_batch", [2, 4])
@pytest.mark.parametrize("backend", BACKENDS)
def test_packed_document_losses_equal_documents_alone_in_bf16(tiny_tokenizer, backend, micro_batch):
    samples = tokenize_documents(code_documents(200), None, tiny_tokenizer, seq_len=2048, fim=FIMConfig(seed=5))
    rows, lengths = pack([s[:700] for s in samples.input_ids], 2048, tiny_tokenizer.eos_token_id)
    chosen = [(r, n) for r, n in zip(rows, lengths, strict=False) if len(n) > 1][:micro_batch]
    assert len(chosen) == micro_batch
    batch = PackedCollator(backend)([{"input_ids": r, "seq_lengths": n} for r, n in chosen])
    check_packed_batch(batch, backend)
    batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}
    torch.manual_seed(0)
    config = llama_config("tiny", vocab_size=len(tiny_tokenizer), attn_implementation=backend, use_cache=False)
    model = LlamaForCausalLM(config).to("cuda", torch.bfloat16).eval()
    reference = LlamaForCausalLM(llama_config("tiny", vocab_size=len(tiny_tokenizer), use_cache=False))
    reference.load_state_dict(model.state_dict())
    reference = reference.to("cuda", torch.bfloat16).eval()  # sdpa, one document at a time: no mask at all
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
        for b, (_, doc_lengths) in enumerate(chosen):
            start = 0
            for n in doc_lengths:
                ids = batch["input_ids"][b, start : start + n]
                packed = F.cross_entropy(logits[b, start : start + n - 1], ids[1:])
                alone = F.cross_entropy(reference(input_ids=ids[None]).logits[0, :-1].float(), ids[1:])
                assert packed.item() == pytest.approx(alone.item(), rel=1e-2)  # bf16 kernels round differently
                start += n
