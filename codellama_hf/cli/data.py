"""`codellama-hf data prepare`: build a stage's document table before the launch, with every core.

    codellama-hf data prepare --config recipes/configs/7b/code.yaml [--num-proc 64] [--field value ...]
    accelerate launch --config_file accelerate_configs/zero3.yaml recipes/code.py --config recipes/configs/7b/code.yaml

A stage trains from one memory-mapped table of documents (data/stream.py). Building it reads the sources and, for a
Table 1 mixture balanced by tokens, counts the tokens of every document (corpus/token_balance.py): at the paper's
scale, hours of work. Done at launch, it runs in one process while every other process waits in a collective, which
`ddp_timeout` (30 minutes by default) ends. Prepared first, the launch finds the table under the same data settings
in the caches (HF_DATASETS_CACHE, CODELLAMA_HF_CACHE) and only memory-maps it.

The options are the recipe's: the same YAML and any field as `--field value`, so the settings that choose the data
(dataset_mixture, mixture_sources, dataset_sources, dataset_split, seed, data_seed) are read exactly as the launch
reads them. Without a shared filesystem, run it on every node (each node's launch reads its own caches).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


class _RecipeOptions(argparse.ArgumentParser):
    """A parser that passes the options it does not define (the recipe's fields) on, in `overrides`, to the
    recipe's own parser."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, rest = super().parse_known_args(args, namespace)
        namespace.overrides = rest
        return namespace, []


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "data",
        help="prepare a stage's document table before launching it (token-balanced mixtures, with every core)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="data_command", required=True, parser_class=_RecipeOptions)
    prepare = commands.add_parser(
        "prepare",
        help="read the sources, schedule the mixture and write the table a launch with these settings reads",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Any other option is a field of the recipe, e.g. --dataset_mixture python --seed 3 (see "
        "`python recipes/code.py --help`).",
    )
    prepare.add_argument("--config", type=Path, required=True, help="the stage's recipe YAML (its `stage` key)")
    prepare.add_argument("--num-proc", type=int, default=None, help="processes counting tokens (default: every core)")
    prepare.set_defaults(func=_prepare)


def _prepare(args: argparse.Namespace) -> int:
    from codellama_hf.corpus.mixture import get_mixture
    from codellama_hf.corpus.token_balance import default_num_proc, token_shares
    from codellama_hf.training import stages
    from codellama_hf.training.config import parse_stage_config, read_config_file
    from codellama_hf.training.stage import get_stage

    stage = read_config_file(args.config).get("stage")
    if not stage:
        raise ValueError(f"{args.config}: no `stage` key; name the stage the file configures (code, python, ...)")
    get_stage(stage)  # a stage that is not registered is an error naming the registered ones
    if args.num_proc is not None and args.num_proc < 1:
        raise ValueError(f"--num-proc {args.num_proc}: must be a positive number of processes")
    # Parsed as a preview (plan_only): a GPU config's precision and devices are the launch's business, not the data's
    _, data_args, config = parse_stage_config(stage, ["--config", str(args.config), *args.overrides, "--plan_only"])
    num_proc = args.num_proc or default_num_proc()
    print(
        f"preparing the {stage} stage's documents ({stages.describe_data(data_args)}, seed {stages.data_seed(config)})"
    )
    started = time.time()
    documents = stages.prepare_documents(stage, data_args, config, num_proc=num_proc, announce=print)
    took = time.time() - started
    folders = sorted({str(Path(entry["filename"]).parent) for entry in documents.cache_files})
    print(f"{len(documents):,} documents in {took:.1f} s; table: {', '.join(folders) or 'in memory'}")
    if "tokens" in documents.column_names and "component" in documents.column_names:
        realised = token_shares(documents)
        weights = get_mixture(data_args.dataset_mixture).weights if data_args.dataset_mixture else {}
        for name, share in realised.items():
            target = f" (mixture weight {weights[name]:.3f})" if name in weights else ""
            print(f"  {name}: {share:.4f} of the tokens{target}")
    print("a launch with the same data settings and caches memory-maps this table instead of building it")
    return 0
