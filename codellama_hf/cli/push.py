"""`codellama-hf push` (and recipes/push.py): publish a Code Llama family to the Hub.

codellama-hf push --model 7b=outputs/7b/lcft --model 7b-python=outputs/7b/python --namespace me --dry-run
codellama-hf push --config family.yaml
"""

from __future__ import annotations

import argparse
from pathlib import Path

from codellama_hf.publish import hub
from codellama_hf.publish.hub import print_report, push_family
from codellama_hf.publish.staging import Member, PushConfig, read_push_config


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    out = {}
    for value in values or []:
        slot, sep, rest = value.partition("=")
        if not sep or not rest:
            raise ValueError(f"{flag} {value!r}: expected SLOT=VALUE, e.g. 7b-python=outputs/7b/python")
        out[slot] = rest
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML push config (models, namespace, collection, ...)")
    parser.add_argument(
        "--model",
        action="append",
        metavar="SLOT=FOLDER",
        help="a family member: 7b, 7b-python, 13b-instruct, ... and its model folder (repeatable)",
    )
    parser.add_argument(
        "--results", action="append", metavar="SLOT=FOLDER", help="evaluation results folder of a member (repeatable)"
    )
    parser.add_argument(
        "--base-model",
        action="append",
        metavar="SLOT=HUB_ID",
        help="Hub id a member was trained from, for its card's base_model (repeatable)",
    )
    parser.add_argument("--namespace", help="user or organisation (default: the token's user)")
    parser.add_argument("--collection", help="collection title")
    parser.add_argument("--no-collection", action="store_true", help="do not create or update a collection")
    parser.add_argument("--private", action="store_true", default=None, help="create private repositories")
    parser.add_argument("--license", help="Hub license id of the cards (default llama2)")
    parser.add_argument("--revision", help="branch to push to (default main)")
    parser.add_argument("--stage-dir", type=Path, help="where repositories are staged (default push_staging)")
    parser.add_argument(
        "--delete-stale",
        action="store_true",
        default=None,
        help="delete remote files the staged repository does not have",
    )
    parser.add_argument(
        "--dry-run", action="store_true", default=None, help="stage and compare only: write the plan, upload nothing"
    )


def config_from_args(args: argparse.Namespace) -> PushConfig:
    members = [Member(slot, path) for slot, path in _pairs(args.model, "--model").items()]
    config = read_push_config(
        args.config,
        models=members,
        results=_pairs(args.results, "--results"),
        base_models=_pairs(args.base_model, "--base-model"),
        namespace=args.namespace,
        private=args.private,
        license=args.license,
        revision=args.revision,
        stage_dir=args.stage_dir,
        delete_stale=args.delete_stale,
        dry_run=args.dry_run,
        collection=args.collection,
    )
    if args.no_collection:
        config.collection = None
    return config


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "push",
        help="publish a Code Llama family (repos, cards, collection) to the Hub",
        description=hub.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    report = push_family(config)
    print_report(report, config.stage_dir)
    return 0
