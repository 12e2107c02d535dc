"""Shared by the convert tests: fixtures and helpers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from codellama_hf.tokenizer import build_tiny_tokenizer


def meta_ffn_dim(dim: int, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
    hidden_dim = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden_dim = int(ffn_dim_multiplier * hidden_dim)
    return multiple_of * ((hidden_dim + multiple_of - 1) // multiple_of)


def make_meta_checkpoint(
    folder: Path,
    tokenizer_model: Path,
    *,
    vocab: int,
    shards: int = 1,
    dim: int = 128,
    n_layers: int = 2,
    n_heads: int = 8,
    n_kv_heads: int | None = None,
    theta: float = 1e4,
    multiple_of: int = 32,
    ffn_dim_multiplier: float | None = None,
    norm_eps: float = 1e-5,
    rope_freqs: bool = False,
    seed: int = 0,
) -> Path:
    """Random model-parallel shards: column-parallel rows, row-parallel and embedding columns split; norms shared.
    `rope_freqs` adds the legacy buffer Llama checkpoints carry (Meta's code loads them with strict=False)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen) * 0.02

    def norm():
        return 1 + 0.1 * torch.randn(dim, generator=gen)

    head_dim, kv = dim // n_heads, n_kv_heads or n_heads
    ffn = meta_ffn_dim(dim, multiple_of, ffn_dim_multiplier)
    norms = {f"layers.{i}.{n}.weight": norm() for i in range(n_layers) for n in ("attention_norm", "ffn_norm")}
    norms["norm.weight"] = norm()
    folder.mkdir(parents=True)
    for s in range(shards):
        sd = {"tok_embeddings.weight": rand(vocab, dim // shards)}
        for i in range(n_layers):
            p = f"layers.{i}."
            sd[p + "attention.wq.weight"] = rand(n_heads * head_dim // shards, dim)
            sd[p + "attention.wk.weight"] = rand(kv * head_dim // shards, dim)
            sd[p + "attention.wv.weight"] = rand(kv * head_dim // shards, dim)
            sd[p + "attention.wo.weight"] = rand(dim, n_heads * head_dim // shards)
            sd[p + "feed_forward.w1.weight"] = rand(ffn // shards, dim)
            sd[p + "feed_forward.w2.weight"] = rand(dim, ffn // shards)
            sd[p + "feed_forward.w3.weight"] = rand(ffn // shards, dim)
            sd[p + "attention_norm.weight"] = norms[p + "attention_norm.weight"].clone()
            sd[p + "ffn_norm.weight"] = norms[p + "ffn_norm.weight"].clone()
        sd["norm.weight"] = norms["norm.weight"].clone()
        sd["output.weight"] = rand(vocab // shards, dim)
        if rope_freqs:
            sd["rope.freqs"] = 1.0 / (theta ** (torch.arange(0, head_dim, 2).float() / head_dim))
        torch.save(sd, folder / f"consolidated.{s:02d}.pth")
    params = {
        "dim": dim,
        "n_layers": n_layers,
        "n_heads": n_heads,
        "multiple_of": multiple_of,
        "norm_eps": norm_eps,
        "vocab_size": -1,
    }
    if n_kv_heads:
        params["n_kv_heads"] = n_kv_heads
    if ffn_dim_multiplier:
        params["ffn_dim_multiplier"] = ffn_dim_multiplier
    if theta != 1e4:
        params["rope_theta"] = theta
    (folder / "params.json").write_text(json.dumps(params))
    shutil.copyfile(tokenizer_model, folder / "tokenizer.model")
    return folder


def no_leftovers(output: Path) -> bool:
    return not output.exists() and not [p for p in output.parent.iterdir() if ".partial" in p.name]


@pytest.fixture(scope="module")
def base_tokenizer_dir(tmp_path_factory) -> Path:
    """The tiny tokenizer without infilling pieces: 4000 pieces, a stand-in for Llama 2's (not Meta's)."""
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok") / "tiny-base", infilling=False)


@pytest.fixture(scope="module")
def small_meta(tmp_path_factory, base_tokenizer_dir) -> Path:
    return make_meta_checkpoint(
        tmp_path_factory.mktemp("meta") / "small",
        base_tokenizer_dir / "tokenizer.model",
        vocab=4000,
        shards=2,
        dim=64,
        n_heads=4,
        n_kv_heads=2,
    )
