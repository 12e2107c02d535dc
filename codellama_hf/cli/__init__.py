"""`codellama-hf` command line: one subcommand per concept, each registered by its own module.

Only the module of the command being run is imported (the others pull in torch and transformers, which take
seconds to import); `codellama-hf --help` imports them all to list every command.

Flags are spelled with dashes (`--allow-code-execution`); the recipes parse their dataclasses with transformers'
HfArgumentParser, which takes both `--allow_code_execution` and `--allow-code-execution`, so the commands take the
underscore spelling too: one name per flag, either spelling, in both places.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command -> module exposing `register(subparsers)`, which adds that subcommand and sets `func` on its parser.
COMMANDS = {
    "tokenizer": "codellama_hf.cli.tokenizer",
    "convert": "codellama_hf.cli.convert",
    "corpus": "codellama_hf.cli.corpus",
    "data": "codellama_hf.cli.data",
    "evaluate": "codellama_hf.cli.evaluate",
    "instruct": "codellama_hf.cli.instruct",
    "card": "codellama_hf.cli.card",
    "push": "codellama_hf.cli.push",
    "reproduce": "codellama_hf.cli.reproduce",
    "plan": "codellama_hf.cli.plan",
    "export": "codellama_hf.cli.export",
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="codellama-hf", description=__doc__.split("\n")[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    wanted = next((a for a in (argv or []) if not a.startswith("-")), None)
    for module in [COMMANDS[wanted]] if wanted in COMMANDS else COMMANDS.values():
        importlib.import_module(module).register(subparsers)
    return parser


def dashed(argv: list[str]) -> list[str]:
    """`--n_samples 200` -> `--n-samples 200` (values, positionals and `--` onwards are left alone)."""
    out = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return out + list(argv[i:])
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            arg = "--" + name[2:].replace("_", "-") + eq + value
        out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = dashed(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as err:
        # Bad input is reported in one line that names the problem; tracebacks are for bugs.
        print(f"codellama-hf {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
