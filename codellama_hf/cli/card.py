"""`codellama-hf card`: write a model card (README.md) from a model's lineage and evaluation results.

The card's sections follow Meta's Code Llama model card; its YAML header carries the Hub metadata (license,
language, pipeline_tag, tags, base_model, datasets and a model-index of the measured results).

    codellama-hf card outputs/7b/lcft --results eval_results/lcft --variant 7b --repo-id me/CodeLlama-7b-hf
"""

from __future__ import annotations

import argparse
from pathlib import Path

from codellama_hf.family import parse_slot, variant_from_name
from codellama_hf.publish.card import CardOptions, write_card


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "card",
        help="write a model card (README.md) from a model's lineage and evaluation results",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", type=Path, help="model folder with lineage.json (a training stage's output)")
    parser.add_argument("--results", type=Path, nargs="*", default=[], help="evaluation results folder(s)")
    parser.add_argument("--variant", help="family slot: 7b, 7b-python, 13b-instruct, ... (default: from the name)")
    parser.add_argument("--repo-id", help="Hub repo the card is for (used in examples and the model-index)")
    parser.add_argument("--base-model", help="Hub id of the model it was trained from, for the metadata")
    parser.add_argument("--license", default="llama2", help="Hub license id (default llama2)")
    parser.add_argument("--out", type=Path, help="where to write (default MODEL/README.md)")
    parser.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    variant = parse_slot(args.variant) if args.variant else variant_from_name(args.repo_id or args.model.name)
    options = CardOptions(repo_id=args.repo_id, variant=variant, base_model=args.base_model, license=args.license)
    path = write_card(args.model, args.results, options, out=args.out)
    print(f"wrote {path}")
    return 0
