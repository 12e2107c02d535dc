"""`python -m experiments.repository_fim --preset cpu --out DIR [--seed N]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __doc__ as DESCRIPTION
from .experiment import PRESETS, run_experiment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.repository_fim",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--preset",
        default="cpu",
        choices=sorted(PRESETS),
        help="cpu: the committed report's run (tiny model, ~10 min); smoke: plumbing; smollm2: the real base (GPU)",
    )
    parser.add_argument("--out", type=Path, required=True, help="run folder (rerun the same command to continue)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, the base and both arms (default 0)")
    args = parser.parse_args(argv)
    report = run_experiment(args.out, preset=args.preset, seed=args.seed)
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
