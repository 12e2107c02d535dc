"""`codellama-hf tokenizer`: build Code Llama's tokenizer from Llama 2's tokenizer.model, or the tiny preset's."""

from __future__ import annotations

import argparse
from pathlib import Path

from codellama_hf.tokenizer.build import build_codellama_tokenizer, build_tiny_tokenizer, load_sp_model


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "tokenizer",
        help="build Code Llama's tokenizer (SentencePiece + HF files) from Llama 2's tokenizer.model",
        description="Build Code Llama's tokenizer from Llama 2's tokenizer.model, or the tiny preset's tokenizer.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--llama2", type=Path, help="Llama 2 tokenizer.model")
    source.add_argument("--tiny", action="store_true", help="train the tiny preset's tokenizer on local code")
    parser.add_argument("--out", type=Path, required=True, help="output folder (must not exist)")
    parser.add_argument("--no-infilling", action="store_true", help="keep the base vocabulary (Python/34B variants)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    infilling = not args.no_infilling
    if args.tiny:
        out = build_tiny_tokenizer(args.out, infilling=infilling, overwrite=args.overwrite)
    else:
        out = build_codellama_tokenizer(args.llama2, args.out, infilling=infilling, overwrite=args.overwrite)
    proto = load_sp_model(out / "tokenizer.model")
    print(f"wrote {out}: {len(proto.pieces)} pieces, infilling {'on' if infilling else 'off'}")
    return 0
