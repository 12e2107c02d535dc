"""`codellama-hf corpus build`: sources -> filters -> exact + near dedup -> parquet shards, as datatrove stages.

The stages and executors are in pipeline.py (local by default, one task per core; Slurm or Ray from the same
YAML), the steps in read_steps.py and dedup_steps.py. Output layout, read by `read_sources` / `load_mixture` (a
folder source) and by the streaming training data path::

    out/
      train/NNN_NNNNN.parquet        columns text, language, source, path, license (strings; licence "" if unknown)
      validation/NNN_NNNNN.parquet   the held-out files (embedded.is_validation: by file, seeded)
      corpus_summary.json            documents / bytes / tokens per language, skips per reason, dedup counts
      stats/<stage>.json             datatrove's per-step stats of every stage, summed over tasks
      build_config.json              the settings of the build

Shards are in no particular order across tasks (the streaming path shuffles); within a shard, documents keep
their source order. `corpus_summary.json` is written last, inside a folder renamed into place, so a folder that
has it is complete. The same inputs and settings give the same documents whatever the number of tasks.

A YAML config holds the same fields as `BuildConfig` (filters, dedup and executor as nested mappings);
command-line options override it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from codellama_hf.corpus.dedup import DedupConfig, DedupStats
from codellama_hf.corpus.embedded import VALIDATION_FRACTION
from codellama_hf.corpus.filters import FilterConfig
from codellama_hf.corpus.source_spec import CORPUS_MARKER, SourceSpec, check_exists
from codellama_hf.io import read_yaml_mapping

log = logging.getLogger(__name__)
SUMMARY_FILE = CORPUS_MARKER


def _executor_config():
    from codellama_hf.corpus.pipeline import ExecutorConfig

    return ExecutorConfig()


@dataclass
class BuildConfig:
    sources: list = field(default_factory=list)
    out: str | None = None
    seed: int = 0
    validation_fraction: float = VALIDATION_FRACTION
    tokenizer: str | None = None  # folder of an HF tokenizer, to count tokens in the summary
    languages: list[str] | None = None  # keep only these languages
    licenses: list[str] | None = None  # keep only these SPDX licence ids (documents of unknown licence are dropped)
    overwrite: bool = False
    num_proc: int | None = None  # shorthand for executor.tasks
    filters: FilterConfig = field(default_factory=FilterConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    executor: object = field(default_factory=_executor_config)

    def __post_init__(self):
        if not 0 <= self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction!r}")
        if self.num_proc is not None:
            if self.num_proc < 1:
                raise ValueError(f"num_proc must be >= 1, got {self.num_proc}")
            self.executor = replace(self.executor, tasks=self.num_proc)
            self.num_proc = None

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> BuildConfig:
        return cls.from_dict(read_yaml_mapping(path, "corpus config"), where=str(path))

    @classmethod
    def from_dict(cls, data: dict, where: str = "corpus config") -> BuildConfig:
        from codellama_hf.corpus.pipeline import ExecutorConfig

        def checked(kind, values, name):
            known = {f.name for f in fields(kind)}
            unknown = sorted(set(values or {}) - known)
            if unknown:
                raise ValueError(f"{where}: unknown {name} field(s) {unknown}; known: {sorted(known)}")
            return kind(**(values or {}))

        data = dict(data)
        filters = checked(FilterConfig, data.pop("filters", None), "filters")
        dedup = checked(DedupConfig, data.pop("dedup", None), "dedup")
        executor = checked(ExecutorConfig, data.pop("executor", None), "executor")
        config = checked(cls, {**data, "num_proc": None}, "top-level")
        config = replace(config, filters=filters, dedup=dedup, executor=executor)
        if data.get("num_proc") is not None:
            config = replace(config, num_proc=data["num_proc"])
        return config

    def to_dict(self) -> dict:
        """The settings that decide the output (what a resumed run must share with the interrupted one)."""
        data = asdict(self)
        data["filters"] = {k: sorted(v) if isinstance(v, frozenset) else v for k, v in data["filters"].items()}
        executor = data.pop("executor")
        data["tasks"] = self.executor.num_tasks  # the shards depend on it; where they run does not
        data["sources"] = [s if isinstance(s, (str, dict)) else asdict(SourceSpec.parse(s)) for s in self.sources]
        return json.loads(json.dumps(data, default=str)) | {"executor_kind": executor["kind"]}


@dataclass
class CorpusSummary:
    splits: dict[str, int]
    languages: dict[str, dict[str, int | None]]  # language -> {"documents", "bytes", "tokens"}
    skipped: dict[str, int]
    dedup: dict[str, int]
    seconds: float = 0.0
    tokenizer: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def load(cls, out: str | os.PathLike, seconds: float = 0.0) -> CorpusSummary:
        data = json.loads((Path(out) / SUMMARY_FILE).read_text())
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known} | {"seconds": round(seconds, 2)})


def _prepare_sources(config: BuildConfig, run_dir: Path) -> list[dict]:
    """Source specs as plain mappings the stages can pickle; git URLs cloned once into the run folder."""
    from codellama_hf.corpus.files import git_checkout

    specs = []
    for raw in config.sources:
        spec = SourceSpec.parse(raw)
        if spec.git:
            dest = run_dir / "git" / f"{len(specs):03d}"
            if not dest.is_dir():
                shutil.rmtree(dest.with_suffix(".tmp"), ignore_errors=True)
                git_checkout(spec, dest.with_suffix(".tmp"))
                os.replace(dest.with_suffix(".tmp"), dest)
            spec = replace(spec, git=None, path=str(dest), label=spec.display(), revision=None)
        specs.append(asdict(spec))
    return specs


def build_corpus(config: BuildConfig, *, dry_run: bool = False) -> CorpusSummary | Path:
    """Run the stages (see module docstring). Local and Ray builds return the summary; a Slurm build returns the
    path of submit.sh, which it runs (submits) unless `dry_run`."""
    from codellama_hf.corpus.pipeline import (
        EmptyCorpusError,
        check_run_folder,
        make_executors,
        run_folder,
        write_slurm_scripts,
    )

    if not config.sources:
        raise ValueError("no sources given: pass folders, data files, git+URL or datasets names")
    if not config.out:
        raise ValueError("no output folder given (--out)")
    out = Path(config.out).absolute()
    config = replace(config, out=str(out))
    if out.exists() and not config.overwrite:
        raise FileExistsError(f"{out} exists; choose a new --out or pass --overwrite")
    if config.tokenizer:  # fail now, not in the last stage
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(config.tokenizer)
    config.executor.check()
    for raw in config.sources:  # before anything is written
        check_exists(SourceSpec.parse(raw))
    start = time.perf_counter()
    run_dir = run_folder(out)
    check_run_folder(run_dir, config)
    staged = replace(config, sources=_prepare_sources(config, run_dir))
    executors = make_executors(staged, run_dir)
    kind = config.executor.kind
    if kind == "slurm":
        submit = write_slurm_scripts(executors, run_dir)
        if not dry_run:
            if not shutil.which("sbatch"):
                raise RuntimeError(f"sbatch is not on PATH: submit {submit} from a Slurm login node")
            subprocess.run(["bash", str(submit)], check=True)
        return submit
    if dry_run:
        raise ValueError("--dry-run writes Slurm job scripts; it needs executor kind slurm")
    try:
        executors[-1].run()
    except EmptyCorpusError:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    if not (out / SUMMARY_FILE).is_file():
        raise RuntimeError(f"the build stopped before writing {out}; run it again to resume ({run_dir})")
    shutil.rmtree(run_dir, ignore_errors=True)
    return CorpusSummary.load(out, time.perf_counter() - start)


def deduplicate(dataset, config: DedupConfig | None = None):
    """Exact + near dedup of an in-memory `datasets.Dataset` (corpus columns) through the same datatrove stages,
    one local task in a temporary folder; order is kept. Returns (dataset, DedupStats)."""
    from datasets import Dataset, concatenate_datasets

    from codellama_hf.corpus.pipeline import make_executors
    from codellama_hf.corpus.read_steps import make_document
    from codellama_hf.corpus.source_spec import features

    config = config or DedupConfig()
    documents = [
        make_document(
            row["text"], language=row["language"], source=row["source"], path=row["path"], license=row["license"]
        )
        for row in dataset
    ]
    filters = FilterConfig.off()
    with tempfile.TemporaryDirectory(prefix="codellama_hf-dedup-") as tmp:
        build = BuildConfig(
            sources=["<memory>"], out=str(Path(tmp) / "out"), validation_fraction=0.0, filters=filters, dedup=config
        )
        executors = make_executors(build, Path(tmp), documents=documents)
        executors[-2].run()  # up to the write stage: no summary, no publishing
        stats = DedupStats(**json.loads((Path(tmp) / "work" / "remove" / "dedup_stats.json").read_text()))
        shards = sorted((Path(tmp) / "output" / "train").glob("*.parquet"))
        parts = [Dataset.from_parquet(str(s), keep_in_memory=True) for s in shards]
        kept = concatenate_datasets(parts) if parts else Dataset.from_dict({k: [] for k in features()})
        kept = kept.cast(features())
    return kept, stats


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
