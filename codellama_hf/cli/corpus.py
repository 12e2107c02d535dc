"""`codellama-hf corpus build|embedded|mix`: corpora from the command line (the pipeline is codellama_hf.corpus)."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from codellama_hf.corpus import build as corpus_build
from codellama_hf.corpus.build import BuildConfig, build_corpus, print_summary
from codellama_hf.corpus.embedded import KINDS, embedded_corpus, save_atomic


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "corpus",
        help="build, deduplicate and mix code corpora (Table 1 mixtures, embedded offline corpus)",
        description=corpus_build.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="corpus_command", required=True)

    build = commands.add_parser("build", help="sources -> filtered, deduplicated dataset on disk")
    build.add_argument("sources", nargs="*", help="folders, git checkouts, git+URL[@rev], data files, datasets names")
    build.add_argument("--config", type=Path, help="YAML with BuildConfig fields; options below override it")
    build.add_argument("--out", help="output folder (must not exist unless --overwrite)")
    build.add_argument("--seed", type=int)
    build.add_argument("--num-proc", type=int, help="tasks of the read and write stages (default: CPU count)")
    build.add_argument("--executor", choices=("local", "slurm", "ray"), dest="executor.kind")
    build.add_argument("--workers", type=int, dest="executor.workers", help="tasks run at once (-1: all)")
    build.add_argument("--partition", dest="executor.partition", help="Slurm partition")
    build.add_argument("--dry-run", action="store_true", help="Slurm: write the job scripts, do not submit them")
    build.add_argument("--licenses", type=lambda v: v.split(","), help="comma-separated SPDX licences to keep")
    build.add_argument("--validation-fraction", type=float)
    build.add_argument("--tokenizer", help="HF tokenizer folder: count tokens per language in the summary")
    build.add_argument("--overwrite", action="store_true", default=None)
    build.add_argument("--languages", type=lambda v: v.split(","), help="comma-separated languages to keep")
    for name in ("min_bytes", "max_bytes", "max_line_length"):
        build.add_argument(f"--{name.replace('_', '-')}", type=int, dest=f"filters.{name}")
    for name in ("max_mean_line_length", "min_alphanumeric"):
        build.add_argument(f"--{name.replace('_', '-')}", type=float, dest=f"filters.{name}")
    build.add_argument("--threshold", type=float, dest="dedup.threshold", help="near-dedup Jaccard threshold (0.85)")
    build.add_argument("--num-perm", type=int, dest="dedup.num_perm", help="MinHash permutations (128)")
    build.add_argument("--ngram", type=int, dest="dedup.ngram", help="shingle length in words (5)")
    build.add_argument("--no-exact-dedup", action="store_false", default=None, dest="dedup.exact")
    build.add_argument("--no-near-dedup", action="store_false", default=None, dest="dedup.near")
    build.set_defaults(func=_cli_build)

    embedded = commands.add_parser("embedded", help="build (or find) the embedded default corpus of this machine")
    embedded.add_argument("kinds", nargs="*", default=list(KINDS), help=f"any of {', '.join(KINDS)} (default: all)")
    embedded.add_argument("--seed", type=int, default=0)
    embedded.set_defaults(func=_cli_embedded)

    mix = commands.add_parser("mix", help="sample a mixture (preset or YAML) and save it")
    mix.add_argument("mixture", help="preset (code, python) or YAML file")
    mix.add_argument("--out", required=True, help="output folder (must not exist)")
    mix.add_argument("--split", default="train", choices=("train", "validation"))
    mix.add_argument("--num-samples", type=int, required=True, help="documents to draw")
    mix.add_argument("--seed", type=int, default=0)
    mix.add_argument("--balance", choices=("tokens", "documents", "bytes"), help="override the mixture's balance")
    mix.set_defaults(func=_cli_mix)


def _cli_build(args: argparse.Namespace) -> int:
    config = BuildConfig.from_yaml(args.config) if args.config else BuildConfig()
    top, nested = {}, {"filters": {}, "dedup": {}, "executor": {}}
    for key, value in vars(args).items():
        if value is None or key in ("func", "command", "corpus_command", "config", "dry_run"):
            continue
        group, _, name = key.partition(".")
        if name:
            nested[group][name] = value
        elif key != "sources" or value:
            top[key] = value
    config = replace(
        config,
        **top,
        filters=replace(config.filters, **nested["filters"]),
        dedup=replace(config.dedup, **nested["dedup"]),
        executor=replace(config.executor, **nested["executor"]),
    )
    result = build_corpus(config, dry_run=args.dry_run)
    if isinstance(result, Path):
        verb = "wrote" if args.dry_run else "submitted"
        print(f"{verb} the Slurm job scripts: {result}")
        if args.dry_run:
            print(result.read_text())
        return 0
    print_summary(result, title=f"corpus {config.out}")
    print(f"wrote {config.out}")
    return 0


def _cli_embedded(args: argparse.Namespace) -> int:
    for kind in args.kinds:
        if kind not in KINDS:
            raise ValueError(f"unknown embedded corpus kind {kind!r}; choose from {KINDS}")
        train = embedded_corpus(kind, "train", seed=args.seed)
        validation = embedded_corpus(kind, "validation", seed=args.seed)
        size = sum(len(t.encode("utf-8", "surrogatepass")) for t in train["text"])
        print(f"{kind}: {len(train)} train / {len(validation)} validation documents, {size:,} train bytes")
    return 0


def _cli_mix(args: argparse.Namespace) -> int:
    from collections import Counter

    from codellama_hf.corpus.mixture import load_mixture

    out = Path(args.out)
    if out.exists():
        raise FileExistsError(f"{out} exists; choose a new --out")
    if args.num_samples < 1:
        raise ValueError(f"--num-samples must be positive, got {args.num_samples}")
    mixed = load_mixture(args.mixture, args.split, seed=args.seed, balance=args.balance)
    sample = mixed.select(range(min(args.num_samples, len(mixed))))
    save_atomic(sample.flatten_indices(), out)
    counts = Counter(sample["component"])
    shares = ", ".join(f"{name} {counts[name] / len(sample):.3f}" for name in sorted(counts))
    print(f"wrote {out}: {len(sample)} documents (document shares: {shares})")
    if "tokens" in sample.column_names:
        from codellama_hf.corpus.token_balance import token_shares

        tokens = ", ".join(f"{name} {share:.3f}" for name, share in token_shares(sample).items())
        print(f"token shares: {tokens}")
    return 0
