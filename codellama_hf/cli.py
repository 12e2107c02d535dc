"""`codellama-hf` command line: one subcommand per concept, each registered by its own module."""

from __future__ import annotations

import argparse
import importlib
import sys

# Each module exposes `register(subparsers)`, which adds its subcommand and sets `func` on the parser.
COMMAND_MODULES = [
    "codellama_hf.tokenizer",
    "codellama_hf.convert",
    "codellama_hf.evaluation.cli",
    "codellama_hf.corpus",
    "codellama_hf.cards",
    "codellama_hf.hub",
    "codellama_hf.instruct",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="codellama-hf", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as err:
        # Bad input is reported in one line that names the problem; tracebacks are for bugs.
        print(f"codellama-hf {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
