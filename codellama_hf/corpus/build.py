"""`codellama-hf corpus build`: sources -> filters -> exact + near dedup -> held-out split -> dataset on disk.

The output is a `datasets.DatasetDict` ("train", "validation") written with `save_to_disk` into a temporary
sibling folder and renamed into place, plus `corpus_summary.json` beside it: documents, bytes and (with a tokenizer)
tokens per language, removals per filter, duplicate clusters. The same inputs and seed give the same dataset.

A YAML config holds the same fields as `BuildConfig` (filters and dedup as nested mappings); command-line options
override it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
import uuid
from collections import defaultdict
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from codellama_hf.corpus.dedup import DedupConfig, deduplicate
from codellama_hf.corpus.embedded import KINDS, VALIDATION_FRACTION, embedded_corpus, is_validation, save_atomic
from codellama_hf.corpus.filters import FilterConfig, SkipCounter
from codellama_hf.corpus.sources import SourceSpec, dataset_from_generator, read_sources
from codellama_hf.io import read_yaml_mapping

log = logging.getLogger(__name__)
SUMMARY_FILE = "corpus_summary.json"


@dataclass
class BuildConfig:
    sources: list = field(default_factory=list)
    out: str | None = None
    seed: int = 0
    num_proc: int = 1
    validation_fraction: float = VALIDATION_FRACTION
    tokenizer: str | None = None  # folder of an HF tokenizer, to count tokens in the summary
    languages: list[str] | None = None  # keep only these languages (for sources that do not set their own)
    overwrite: bool = False
    filters: FilterConfig = field(default_factory=FilterConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)

    def __post_init__(self):
        if not 0 <= self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction!r}")
        if self.num_proc < 1:
            raise ValueError(f"num_proc must be >= 1, got {self.num_proc}")

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> BuildConfig:
        return cls.from_dict(read_yaml_mapping(path, "corpus config"), where=str(path))

    @classmethod
    def from_dict(cls, data: dict, where: str = "corpus config") -> BuildConfig:
        def checked(kind, values, name):
            known = {f.name for f in fields(kind)}
            unknown = sorted(set(values or {}) - known)
            if unknown:
                raise ValueError(f"{where}: unknown {name} field(s) {unknown}; known: {sorted(known)}")
            return kind(**(values or {}))

        data = dict(data)
        filters = checked(FilterConfig, data.pop("filters", None), "filters")
        dedup = checked(DedupConfig, data.pop("dedup", None), "dedup")
        return replace(checked(cls, data, "top-level"), filters=filters, dedup=dedup)


@dataclass
class CorpusSummary:
    splits: dict[str, int]
    languages: dict[str, dict[str, int | None]]  # language -> {"documents", "bytes", "tokens"}
    skipped: dict[str, int]
    dedup: dict[str, int]
    seconds: float
    tokenizer: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def _materialize(dataset):
    """Write a streamed dataset to Arrow (datasets' cache) so that it can be deduplicated by index."""
    from datasets import IterableDataset

    if not isinstance(dataset, IterableDataset):
        return dataset
    return dataset_from_generator(_iterate, gen_kwargs={"dataset": dataset}, fingerprint=uuid.uuid4().hex)


def _iterate(dataset):
    yield from dataset


def _byte_length(batch):
    return {"_bytes": [len(t.encode("utf-8", "surrogatepass")) for t in batch["text"]]}


def _token_length(batch, *, tokenizer):
    ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
    return {"_tokens": [len(x) for x in ids]}


def language_table(dataset, tokenizer=None, num_proc: int = 1) -> dict[str, dict[str, int]]:
    """Documents, bytes and (with a tokenizer, else None) tokens per language."""
    if len(dataset) == 0:
        return {}
    nproc = num_proc if num_proc > 1 and len(dataset) >= 4 * num_proc else None
    sized = dataset.select_columns(["text", "language"]).map(
        _byte_length, batched=True, num_proc=nproc, desc="count bytes"
    )
    if tokenizer is not None:
        sized = sized.map(
            _token_length, batched=True, fn_kwargs={"tokenizer": tokenizer}, num_proc=nproc, desc="count tokens"
        )
    table: dict[str, dict[str, int]] = defaultdict(lambda: {"documents": 0, "bytes": 0, "tokens": None})
    columns = ["language", "_bytes"] + (["_tokens"] if tokenizer is not None else [])
    for batch in sized.select_columns(columns).iter(batch_size=10_000):
        for i, language in enumerate(batch["language"]):
            row = table[language]
            row["documents"] += 1
            row["bytes"] += batch["_bytes"][i]
            if tokenizer is not None:
                row["tokens"] = (row["tokens"] or 0) + batch["_tokens"][i]
    return dict(sorted(table.items(), key=lambda kv: -kv[1]["bytes"]))


def split_by_file(dataset, seed: int, fraction: float):
    """DatasetDict(train, validation) with every file wholly on one side (see embedded.is_validation)."""
    from datasets import DatasetDict

    held = [is_validation(seed, s, p, fraction) for s, p in zip(dataset["source"], dataset["path"], strict=False)]
    splits = {
        "train": dataset.select([i for i, h in enumerate(held) if not h]),
        "validation": dataset.select([i for i, h in enumerate(held) if h]),
    }
    # A seeded shuffle, written contiguously: the output order does not follow the folders' order.
    return DatasetDict(
        {k: v.shuffle(seed=seed).flatten_indices() for k, v in splits.items() if len(v) or k == "train"}
    )


def build_corpus(config: BuildConfig) -> CorpusSummary:
    """Run the whole pipeline and save the dataset to `config.out` (see module docstring)."""
    if not config.sources:
        raise ValueError("no sources given: pass folders, data files, git+URL or datasets names")
    if not config.out:
        raise ValueError("no output folder given (--out)")
    out = Path(config.out)
    if out.exists() and not config.overwrite:
        raise FileExistsError(f"{out} exists; choose a new --out or pass --overwrite")
    tokenizer = None
    if config.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(config.tokenizer)
    start = time.perf_counter()
    skipped = SkipCounter()
    specs = [SourceSpec.parse(s) for s in config.sources]
    if config.languages:
        specs = [s if s.languages else replace(s, languages=list(config.languages)) for s in specs]
    dataset = _materialize(read_sources(specs, filters=config.filters, stats=skipped, num_proc=config.num_proc))
    if len(dataset) == 0:
        raise ValueError(f"no documents kept from {config.sources}; skipped: {dict(skipped.table_rows())}")
    log.info("read %d documents (skipped %s)", len(dataset), dict(skipped))
    dataset, dedup = deduplicate(dataset, config.dedup, num_proc=config.num_proc)
    splits = split_by_file(dataset, config.seed, config.validation_fraction)
    summary = CorpusSummary(
        splits={k: len(v) for k, v in splits.items()},
        languages=language_table(dataset, tokenizer, config.num_proc),
        skipped=dict(skipped.table_rows()),
        dedup=asdict(dedup),
        seconds=round(time.perf_counter() - start, 2),
        tokenizer=config.tokenizer,
    )
    save_atomic(splits, out, extra_files={SUMMARY_FILE: summary.to_json()}, overwrite=config.overwrite)
    return summary


def print_summary(summary: CorpusSummary, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=False)
    table = Table(title=title)
    for name in ("language", "documents", "bytes", "tokens"):
        table.add_column(name, justify="left" if name == "language" else "right")
    for language, row in summary.languages.items():
        tokens = f"{row['tokens']:,}" if summary.tokenizer else "-"
        table.add_row(language, f"{row['documents']:,}", f"{row['bytes']:,}", tokens)
    console.print(table)
    removed = Table(title="removed")
    removed.add_column("reason")
    removed.add_column("documents", justify="right")
    for reason, count in summary.skipped.items():
        removed.add_row(reason, f"{count:,}")
    removed.add_row("exact duplicate", f"{summary.dedup['exact_removed']:,}")
    removed.add_row(
        "near duplicate",
        f"{summary.dedup['near_removed']:,} ({summary.dedup['near_clusters']:,} clusters, "
        f"largest {summary.dedup['largest_cluster']})",
    )
    console.print(removed)
    console.print(f"splits: {summary.splits}  ({summary.seconds:.1f} s)")


# ---------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "corpus",
        help="build, deduplicate and mix code corpora (Table 1 mixtures, embedded offline corpus)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="corpus_command", required=True)

    build = commands.add_parser("build", help="sources -> filtered, deduplicated dataset on disk")
    build.add_argument("sources", nargs="*", help="folders, git checkouts, git+URL[@rev], data files, datasets names")
    build.add_argument("--config", type=Path, help="YAML with BuildConfig fields; options below override it")
    build.add_argument("--out", help="output folder (must not exist unless --overwrite)")
    build.add_argument("--seed", type=int)
    build.add_argument("--num-proc", type=int, help="processes for hashing and LSH bucketing")
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
    mix.set_defaults(func=_cli_mix)


def _cli_build(args: argparse.Namespace) -> int:
    config = BuildConfig.from_yaml(args.config) if args.config else BuildConfig()
    top, nested = {}, {"filters": {}, "dedup": {}}
    for key, value in vars(args).items():
        if value is None or key in ("func", "command", "corpus_command", "config"):
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
    )
    summary = build_corpus(config)
    print_summary(summary, title=f"corpus {config.out}")
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
    mixed = load_mixture(args.mixture, args.split, seed=args.seed)
    sample = mixed.select(range(min(args.num_samples, len(mixed))))
    save_atomic(sample.flatten_indices(), out)
    counts = Counter(sample["component"])
    shares = ", ".join(f"{name} {counts[name] / len(sample):.3f}" for name in sorted(counts))
    print(f"wrote {out}: {len(sample)} documents ({shares})")
    return 0
