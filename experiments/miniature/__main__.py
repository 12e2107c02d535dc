"""`python -m experiments.miniature --preset tiny --out DIR [--seed N]` (also `codellama-hf reproduce`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __doc__ as DESCRIPTION
from .pipeline import reproduce
from .presets import PRESETS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset",
        default="tiny",
        choices=sorted(PRESETS),
        help="tiny: the report's run (~20 min on 2 cores); smoke: a few steps of everything; smollm2: the recipe "
        "on the real SmolLM2-135M base (~30 min on 2 idle cores); gpu: the same, sized for ~15 min on one GPU; "
        "smollm2-smoke: a few steps of that",
    )
    parser.add_argument("--out", type=Path, required=True, help="run folder (rerun the same command to continue)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every stage and sampling (default 0)")
    parser.add_argument(
        "--hub-endpoint", help="compare the staged family with this Hub in the dry run (default: stage only, offline)"
    )


def run(args: argparse.Namespace) -> int:
    reproduce(args.out, preset=args.preset, seed=args.seed, hub_endpoint=args.hub_endpoint)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.miniature",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
