"""`codellama-hf export gguf|folder`: a GGUF (and Ollama Modelfile) from a model folder, or a folder made portable."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a model: GGUF for llama.cpp/Ollama, or complete an HF folder for transformers 4.x/5.x",
        description="Export a model folder to the formats Code Llama users run.",
    )
    commands = parser.add_subparsers(dest="export_command", required=True, metavar="{gguf,folder}")

    gguf = commands.add_parser(
        "gguf",
        help="write one GGUF file (llama.cpp, Ollama, llama-cpp-python)",
        description="Write a GGUF file from an HF Llama folder that holds tokenizer.model (SentencePiece: Llama 2, "
        "Code Llama) or a byte-level BPE tokenizer.json (SmolLM2, Llama 3-style); the infilling tokens' ids go "
        "under llama.cpp's FIM keys.",
    )
    gguf.add_argument("model", type=Path, help="model folder (a stage output, checkpoint or converted model)")
    gguf.add_argument("--out", type=Path, required=True, help="GGUF file to write")
    gguf.add_argument("--type", dest="kind", default="f16", help="f16 (default), bf16 or q8_0")
    gguf.add_argument("--name", help="model name stored in the file (default: the folder's name)")
    gguf.add_argument("--ollama", action="store_true", help="also write an Ollama Modelfile beside the GGUF")
    gguf.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    gguf.set_defaults(func=_cli_gguf)

    folder = commands.add_parser(
        "folder",
        help="complete an HF model folder in place (tokenizer.model, 4.x-readable tokenizer files, rope keys)",
        description="Make a model folder portable in place: tokenizer.model and tokenizer files that transformers "
        "4.x and 5.x read alike, both rope keys in config.json, and the stop ids in generation_config.json.",
    )
    folder.add_argument("model", type=Path, help="model folder to complete")
    folder.add_argument(
        "--sentencepiece",
        type=Path,
        help="the tokenizer.model the model was trained with (default: the folder's own); checked against "
        "tokenizer.json",
    )
    folder.set_defaults(func=_cli_folder)


def _cli_gguf(args: argparse.Namespace) -> int:
    from codellama_hf.export.gguf import export_gguf

    out = export_gguf(args.model, args.out, kind=args.kind, name=args.name, overwrite=args.overwrite)
    print(f"wrote {out} ({args.kind}, {out.stat().st_size / 2**20:,.1f} MiB)")
    if args.ollama:
        from codellama_hf.export.ollama import model_kind, write_modelfile

        modelfile = write_modelfile(args.model, out, overwrite=args.overwrite)
        print(f"wrote {modelfile} ({model_kind(args.model)} template): ollama create NAME -f {modelfile}")
    return 0


def _cli_folder(args: argparse.Namespace) -> int:
    from codellama_hf.export.model_folder import complete_model_folder

    complete_model_folder(args.model, sentencepiece=args.sentencepiece)
    print(f"completed {args.model}: tokenizer.model, tokenizer files for transformers 4.x and 5.x, rope keys")
    return 0
