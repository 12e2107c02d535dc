"""Shared by the export_gguf tests: fixtures and helpers."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def models(tmp_path_factory, llama2_dir) -> dict[str, Path]:
    """Meta checkpoints with the real Llama 2 tokenizer: Code Llama 7B-style (32016, infilling) and
    Python/34B-style (32000), grouped-query attention (8 heads, 2 KV heads) so q and k permute differently."""
    from codellama_hf.convert import meta_to_hf
    from tests.helpers.convert import make_meta_checkpoint

    root = tmp_path_factory.mktemp("gguf-models")
    meta = make_meta_checkpoint(root / "meta", llama2_dir / "tokenizer.model", vocab=32000, n_kv_heads=2, theta=1e6)
    return {
        "infill": meta_to_hf(meta, root / "codellama", dtype="float32", extend_vocab=True, progress=False),
        # bfloat16 weights in several shards, as Meta's larger models are converted
        "python": meta_to_hf(meta, root / "python", dtype="bfloat16", max_shard_size="4MB", progress=False),
    }


@pytest.fixture(scope="module")
def smollm2_fim_model(tmp_path_factory) -> Path:
    """A tiny tied-embedding Llama on the real SmolLM2 tokenizer grown by `codellama-hf tokenizer --add-fim`
    (49,152 -> 49,156: <PRE> <SUF> <MID> <EOT> at 49152-49155), saved as a stage saves it."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from codellama_hf.assets import smollm2_dir
    from codellama_hf.export.model_folder import complete_model_folder
    from codellama_hf.models import llama_config
    from codellama_hf.tokenizer.bpe import add_fim_tokens_to_folder

    folder, ids = add_fim_tokens_to_folder(smollm2_dir(), tmp_path_factory.mktemp("smollm2-fim") / "model")
    assert ids == [49152, 49153, 49154, 49155]
    torch.manual_seed(0)
    config = llama_config(
        "tiny", vocab_size=49156, num_key_value_heads=2, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    complete_model_folder(folder, tokenizer=AutoTokenizer.from_pretrained(folder))
    return folder
