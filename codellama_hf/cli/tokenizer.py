"""`codellama-hf tokenizer`: build Code Llama's tokenizer from Llama 2's tokenizer.model, or the tiny preset's, or
add the FIM tokens to a byte-level BPE base's tokenizer (Llama 3-style, SmolLM2: codellama_hf.tokenizer.bpe)."""

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
    source.add_argument(
        "--add-fim",
        "--add_fim",
        metavar="BASE",
        help="a byte-level BPE base (model folder or tokenizer folder): append <PRE> <SUF> <MID> <EOT> as special "
        "tokens at ids V..V+3 after its V tokens",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (must not exist)")
    parser.add_argument("--no-infilling", action="store_true", help="keep the base vocabulary (Python/34B variants)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    if args.add_fim:
        from codellama_hf.tokenizer.bpe import add_fim_tokens_to_folder

        if args.no_infilling:
            raise ValueError("--add-fim and --no-infilling contradict each other")
        out, ids = add_fim_tokens_to_folder(args.add_fim, args.out, overwrite=args.overwrite)
        names = ", ".join(f"{name}={i}" for name, i in zip(("<PRE>", "<SUF>", "<MID>", "<EOT>"), ids, strict=True))
        print(f"wrote {out}: {ids[-1] + 1} tokens, FIM tokens {names}; grow the model with resize_token_embeddings")
        return 0
    infilling = not args.no_infilling
    if args.tiny:
        out = build_tiny_tokenizer(args.out, infilling=infilling, overwrite=args.overwrite)
    else:
        out = build_codellama_tokenizer(args.llama2, args.out, infilling=infilling, overwrite=args.overwrite)
    proto = load_sp_model(out / "tokenizer.model")
    print(f"wrote {out}: {len(proto.pieces)} pieces, infilling {'on' if infilling else 'off'}")
    return 0
