"""Convert checkpoints between Meta's format and Hugging Face's, then check the result with plain transformers.

Start of the pipeline (codellama.md §3.1): Llama 2 as Meta distributes it (consolidated.NN.pth + params.json +
tokenizer.model) becomes the HF folder that the code stage trains; for 7B/13B, `extend_vocab` adds Code Llama's 16
infilling pieces (embeddings and output grow 32000 -> 32016, new rows = mean of the old). End of the pipeline: a
trained HF model goes back to Meta's format, for Meta's own code and Meta-format tools.

    python recipes/convert.py --input llama-2-7b --output outputs/7b/llama2 --extend_vocab true
    python recipes/convert.py --direction hf-to-meta --input outputs/13b/instruct --output outputs/13b/meta \\
        --shards 2
    python recipes/convert.py --config my-conversion.yaml --overwrite true
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from trl import TrlParser

from codellama_hf.convert import MetaCheckpoint, hf_to_meta, meta_to_hf
from codellama_hf.models import assert_rope_theta, rope_theta


@dataclass
class ConvertConfig:
    input: str = field(default="", metadata={"help": "Meta checkpoint folder (meta-to-hf) or HF folder"})
    output: str = field(default="", metadata={"help": "output folder; must not exist unless overwrite"})
    direction: Literal["meta-to-hf", "hf-to-meta"] = "meta-to-hf"
    dtype: str = field(default="", metadata={"help": "bfloat16/float16/float32/auto; default bf16 to HF, auto back"})
    extend_vocab: bool = field(default=False, metadata={"help": "Llama 2 -> Code Llama 7B/13B vocabulary"})
    tokenizer_model: str | None = field(default=None, metadata={"help": "tokenizer.model if not beside the input"})
    shards: int = field(default=1, metadata={"help": "hf-to-meta: model-parallel shards (7B 1, 13B 2, 34B 4)"})
    max_shard_size: str = field(default="5GB", metadata={"help": "meta-to-hf: largest safetensors file"})
    overwrite: bool = False
    load_check: bool = field(default=True, metadata={"help": "meta-to-hf: load the weights and run a forward pass"})


logger = logging.getLogger("convert")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    # 1. Config: YAML (--config) and/or command-line flags.
    (config,) = TrlParser([ConvertConfig]).parse_args_and_config()
    if not config.input or not config.output:
        raise SystemExit("convert: error: --input and --output are required")
    try:
        convert_and_check(config)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as err:
        print(f"convert: error: {err}", file=sys.stderr)  # bad input ends in one line, as in the CLI
        raise SystemExit(2) from None


def convert_and_check(config: ConvertConfig) -> None:
    # 2. Convert, streaming tensor by tensor into a temporary folder renamed on success.
    if config.direction == "meta-to-hf":
        out = meta_to_hf(
            config.input,
            config.output,
            dtype=config.dtype or "bfloat16",
            extend_vocab=config.extend_vocab,
            tokenizer_model=config.tokenizer_model,
            max_shard_size=config.max_shard_size,
            overwrite=config.overwrite,
        )
    else:
        out = hf_to_meta(
            config.input,
            config.output,
            shards=config.shards,
            dtype=config.dtype or "auto",
            tokenizer_model=config.tokenizer_model,
            overwrite=config.overwrite,
        )

    # 3. Check the result the way its users will open it.
    if config.direction == "hf-to-meta":
        checkpoint = MetaCheckpoint(Path(out))  # params.json against every shard's keys and shapes
        logger.info("check: %s opens as a %d-shard Meta checkpoint", out, len(checkpoint.shards))
        return
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

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


if __name__ == "__main__":
    main()
