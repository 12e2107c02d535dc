"""`codellama-hf convert meta-to-hf|hf-to-meta`: the flags of recipes/convert.py (ConvertConfig), as subcommands.

codellama-hf convert meta-to-hf --input llama-2-7b --output outputs/7b/llama2 --extend-vocab
codellama-hf convert hf-to-meta --input outputs/13b/instruct --output outputs/13b/meta --shards 2
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from transformers import HfArgumentParser

from codellama_hf.convert.config import ConvertConfig, convert_and_check

DIRECTIONS = {
    "meta-to-hf": "Meta consolidated.NN.pth + params.json -> HF folder (checked with plain transformers)",
    "hf-to-meta": "HF folder -> Meta consolidated.NN.pth + params.json (checked by reopening it)",
}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert checkpoints between Meta's consolidated.NN.pth format and Hugging Face safetensors",
        description="Convert checkpoints between Meta's format and Hugging Face's, streaming tensor by tensor.",
    )
    directions = parser.add_subparsers(dest="subcommand", required=True, parser_class=HfArgumentParser)
    for direction, about in DIRECTIONS.items():
        sub = directions.add_parser(direction, dataclass_types=[ConvertConfig], help=about, description=about)
        sub.set_defaults(func=_cli, direction=direction)


def _cli(args: argparse.Namespace) -> int:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    if args.direction != args.subcommand:
        raise ValueError(f"--direction {args.direction} contradicts the subcommand {args.subcommand}; drop it")
    names = {f.name for f in dataclasses.fields(ConvertConfig)}
    convert_and_check(ConvertConfig(**{k: v for k, v in vars(args).items() if k in names}))
    return 0
