"""One conversion setting set for `recipes/convert.py` and `codellama-hf convert`, and the run that checks its output.

Both entry points parse `ConvertConfig` with transformers' HfArgumentParser (the recipe through TrlParser, which adds
`--config file.yaml`), so every flag has one name and accepts both spellings: `--extend_vocab true` or
`--extend-vocab`, `--max_shard_size` or `--max-shard-size`, and `--no-progress` / `--no-load-check` for the booleans
that default to true.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)


@dataclass
class ConvertConfig:
    input: str = field(default="", metadata={"help": "Meta checkpoint folder (meta-to-hf) or HF folder"})
    output: str = field(default="", metadata={"help": "output folder; must not exist unless overwrite"})
    direction: Literal["meta-to-hf", "hf-to-meta"] = "meta-to-hf"
    dtype: str = field(
        default="", metadata={"help": "bfloat16/float16/float32/auto (default: bfloat16 to HF, the input's back)"}
    )
    extend_vocab: bool = field(
        default=False, metadata={"help": "meta-to-hf: add Code Llama's 16 infilling pieces (Llama 2 -> 7B/13B init)"}
    )
    tokenizer_model: str | None = field(
        default=None,
        metadata={"help": "tokenizer.model if not beside the input (or in its parent)", "aliases": ["--tokenizer"]},
    )
    shards: int = field(default=1, metadata={"help": "hf-to-meta: model-parallel shards (7B 1, 13B 2, 34B 4)"})
    max_shard_size: str = field(default="5GB", metadata={"help": "meta-to-hf: largest safetensors file"})
    max_position_embeddings: int | None = field(
        default=None, metadata={"help": "meta-to-hf: default 16384 if theta > 1e4, else 4096"}
    )
    overwrite: bool = field(default=False, metadata={"help": "replace an existing output folder"})
    load_check: bool = field(
        default=True, metadata={"help": "meta-to-hf: load the weights and run a forward pass after converting"}
    )
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self):
        if not self.input or not self.output:
            raise ValueError("--input and --output are required")


def convert_and_check(config: ConvertConfig) -> Path:
    """Convert (streaming into a temporary folder renamed on success), then open the result as its users will."""
    from codellama_hf.convert.meta_reader import MetaCheckpoint
    from codellama_hf.convert.to_hf import meta_to_hf
    from codellama_hf.convert.to_meta import hf_to_meta

    if config.direction == "meta-to-hf":
        out = meta_to_hf(
            config.input,
            config.output,
            dtype=config.dtype or "bfloat16",
            extend_vocab=config.extend_vocab,
            tokenizer_model=config.tokenizer_model,
            max_shard_size=config.max_shard_size,
            max_position_embeddings=config.max_position_embeddings,
            overwrite=config.overwrite,
            progress=config.progress,
        )
    else:
        out = hf_to_meta(
            config.input,
            config.output,
            shards=config.shards,
            dtype=config.dtype or "auto",
            tokenizer_model=config.tokenizer_model,
            overwrite=config.overwrite,
            progress=config.progress,
        )
        checkpoint = MetaCheckpoint(Path(out))  # params.json against every shard's keys and shapes
        logger.info("check: %s opens as a %d-shard Meta checkpoint", out, len(checkpoint.shards))
        return Path(out)

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from codellama_hf.models import assert_rope_theta, rope_theta

    hf_config, tokenizer = AutoConfig.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    if len(tokenizer) != hf_config.vocab_size:
        raise RuntimeError(f"check failed: tokenizer has {len(tokenizer)} tokens, config {hf_config.vocab_size}")
    if config.load_check:
        model = AutoModelForCausalLM.from_pretrained(out, dtype="auto").eval()
        assert_rope_theta(model, rope_theta(hf_config))
        with torch.no_grad():
            logits = model(**tokenizer("def fibonacci(n):", return_tensors="pt")).logits
        if not torch.isfinite(logits).all():
            raise RuntimeError("check failed: non-finite logits")
    logger.info(
        "check: %s loads with AutoTokenizer%s; theta %g, vocab %d",
        out,
        " and AutoModelForCausalLM (finite logits)" if config.load_check else "",
        rope_theta(hf_config),
        hf_config.vocab_size,
    )
    return Path(out)
