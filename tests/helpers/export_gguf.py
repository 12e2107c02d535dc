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
