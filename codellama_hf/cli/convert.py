"""`codellama-hf convert meta-to-hf|hf-to-meta`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from codellama_hf.convert.to_hf import meta_to_hf
from codellama_hf.convert.to_meta import hf_to_meta
from codellama_hf.io import DTYPE_NAMES

logger = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert checkpoints between Meta's consolidated.NN.pth format and Hugging Face safetensors",
        description="Convert checkpoints between Meta's format and Hugging Face's, streaming tensor by tensor.",
    )
    directions = parser.add_subparsers(dest="direction", required=True)
    to_hf = directions.add_parser("meta-to-hf", help="Meta consolidated.NN.pth + params.json -> HF folder")
    to_hf.add_argument("--input", type=Path, required=True, help="Meta checkpoint folder")
    to_hf.add_argument("--output", type=Path, required=True, help="HF output folder (must not exist)")
    to_hf.add_argument(
        "--dtype", default="bfloat16", choices=[*DTYPE_NAMES, "auto"], help="weights dtype (default bf16)"
    )
    to_hf.add_argument(
        "--extend-vocab",
        action="store_true",
        help="add Code Llama's 16 infilling pieces (Llama 2 -> Code Llama 7B/13B init)",
    )
    to_hf.add_argument("--tokenizer", type=Path, help="tokenizer.model (default: in --input or its parent)")
    to_hf.add_argument("--max-shard-size", default="5GB", help="largest safetensors file (default 5GB)")
    to_hf.add_argument("--max-position-embeddings", type=int, help="default 16384 if theta > 1e4, else 4096")
    to_hf.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    to_hf.add_argument("--no-progress", action="store_true", help="no progress bar")
    to_hf.set_defaults(func=_cli_meta_to_hf)

    to_meta = directions.add_parser("hf-to-meta", help="HF folder -> Meta consolidated.NN.pth + params.json")
    to_meta.add_argument("--input", type=Path, required=True, help="HF model folder")
    to_meta.add_argument("--output", type=Path, required=True, help="Meta output folder (must not exist)")
    to_meta.add_argument("--shards", type=int, default=1, help="model-parallel shards (7B: 1, 13B: 2, 34B: 4)")
    to_meta.add_argument("--dtype", default="auto", choices=[*DTYPE_NAMES, "auto"], help="default: keep the input's")
    to_meta.add_argument("--tokenizer", type=Path, help="tokenizer.model (default: the one in --input)")
    to_meta.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    to_meta.add_argument("--no-progress", action="store_true", help="no progress bar")
    to_meta.set_defaults(func=_cli_hf_to_meta)


def _log_to_stdout() -> None:
    if not logger.handlers and not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)


def _cli_meta_to_hf(args: argparse.Namespace) -> int:
    _log_to_stdout()
    meta_to_hf(
        args.input,
        args.output,
        dtype=args.dtype,
        extend_vocab=args.extend_vocab,
        tokenizer_model=args.tokenizer,
        max_shard_size=args.max_shard_size,
        max_position_embeddings=args.max_position_embeddings,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    return 0


def _cli_hf_to_meta(args: argparse.Namespace) -> int:
    _log_to_stdout()
    hf_to_meta(
        args.input,
        args.output,
        shards=args.shards,
        dtype=args.dtype,
        tokenizer_model=args.tokenizer,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    return 0
