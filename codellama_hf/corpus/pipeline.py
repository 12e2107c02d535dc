"""The corpus build as datatrove stages, and the executors that run them: local, Slurm or Ray, from one config.

Stages (each a datatrove pipeline with its own task count and logging folder under the run folder):

    read ──> near_buckets ──> exact_buckets ──> clusters ──> write ──> finalize
    N tasks   one per band     1 task            1 task       N tasks   1 task

- read: sources -> language / licence / quality filters -> signatures (pass-through) -> work/filtered/NNNNN.parquet
- near_buckets, exact_buckets: datatrove's MinhashDedupBuckets -> candidate pairs (work/dups/{near,exact})
- clusters: union-find over the pairs -> work/remove/NNNNNN.remove
- write: the filtered shard again -> datatrove's MinhashDedupFilter -> split tag + language counts ->
  output/{train,validation}/NNN_NNNNN.parquet
- finalize: summary + per-stage stats, then the output folder is renamed to `out` (the only step users see);
  a local build then deletes the run folder, a Slurm build leaves its logs there.

Everything lives in the run folder `<out>.partial/` until finalize: an interrupted run leaves no `out`, and running
the same command again resumes it, datatrove's completion markers (logs/<stage>/completions/NNNNN) skipping the
tasks that finished. A run folder made with other settings is refused, naming the setting.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from datatrove.pipeline.base import PipelineStep

from codellama_hf.io import changed_settings

STAGES = ("read", "near_buckets", "exact_buckets", "clusters", "write", "finalize")
KINDS = ("local", "slurm", "ray")
RUN_CONFIG = "run_config.json"


class EmptyCorpusError(ValueError):
    """No document survived reading and filtering: nothing to resume, the run folder is removed."""


@dataclass
class ExecutorConfig:
    """Where the stages run. `tasks` splits the read and write stages (default: the CPU count); `workers` caps
    how many run at once (-1: all). The Slurm fields map to datatrove's SlurmPipelineExecutor."""

    kind: str = "local"
    tasks: int | None = None
    workers: int = -1
    partition: str | None = None
    time: str = "24:00:00"
    cpus_per_task: int = 1
    mem_per_cpu_gb: float = 2
    qos: str | None = None
    env_command: str | None = None
    venv_path: str | None = None
    sbatch_args: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"executor kind {self.kind!r} is not one of {KINDS}")
        if self.tasks is not None and self.tasks < 1:
            raise ValueError(f"executor tasks must be >= 1, got {self.tasks}")
        if self.workers == 0 or self.workers < -1:
            raise ValueError(f"executor workers must be -1 (all) or >= 1, got {self.workers}")

    def check(self) -> None:
        """What can be checked before anything is written."""
        import importlib.util

        if self.kind == "slurm" and not self.partition:
            raise ValueError("executor kind slurm needs a partition (executor.partition in the YAML, or --partition)")
        if self.kind == "ray" and importlib.util.find_spec("ray") is None:  # datatrove imports Ray lazily
            raise RuntimeError("executor kind ray needs Ray: pip install 'datatrove[ray]' (or pip install ray)")

    @property
    def num_tasks(self) -> int:
        return self.tasks or os.cpu_count() or 1


def run_folder(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".partial")


def stage_pipelines(config, run_dir: Path, *, documents=None) -> dict[str, tuple[list, int]]:
    """{stage: (pipeline steps, tasks)} for a BuildConfig. `documents` (a list of datatrove Documents) replaces
    the source readers: the embedded corpus deduplicates rows it already holds in memory."""
    from datatrove.pipeline.dedup.minhash import MinhashDedupBuckets, MinhashDedupFilter
    from datatrove.pipeline.writers import ParquetWriter

    from codellama_hf.corpus.dedup_steps import EXACT_CONFIG, DuplicateClusters, Signatures, near_config
    from codellama_hf.corpus.read_steps import (
        LanguageFilter,
        LicenseFilter,
        QualityFilter,
        ShardReader,
        SourcesReader,
        SplitAndCount,
        flat_row,
    )

    work = str(run_dir / "work")
    tasks = 1 if documents is not None else config.executor.num_tasks
    near = near_config(config.dedup)
    read = [documents] if documents is not None else [SourcesReader(config.sources, config.filters)]
    if config.languages:
        read.append(LanguageFilter(config.languages))
    if config.licenses:
        read.append(LicenseFilter(config.licenses))
    read += [
        QualityFilter(config.filters),
        Signatures(work, config.dedup),
        ParquetWriter(f"{work}/filtered", "${rank}.parquet", expand_metadata=True, max_file_size=-1),
    ]
    write = [
        ShardReader(f"{work}/filtered"),
        MinhashDedupFilter(f"{work}/remove"),
        SplitAndCount(config.seed, config.validation_fraction, config.tokenizer),
        ParquetWriter(str(run_dir / "output"), "${split}/${rank}.parquet", adapter=flat_row),
    ]
    return {
        "read": (read, tasks),
        "near_buckets": ([MinhashDedupBuckets(f"{work}/near", f"{work}/dups/near", config=near)], near.num_buckets),
        "exact_buckets": ([MinhashDedupBuckets(f"{work}/exact", f"{work}/dups/exact", config=EXACT_CONFIG)], 1),
        "clusters": ([DuplicateClusters(work, config.dedup, tasks)], 1),
        "write": (write, tasks),
        "finalize": ([Finalize(str(run_dir), config.out, config.to_dict())], 1),
    }


def check_run_folder(run_dir: Path, config) -> None:
    """Create the run folder, or check that an existing one (an interrupted run) was made with the same settings."""
    saved = run_dir / RUN_CONFIG
    wanted = config.to_dict()
    if saved.is_file():
        changed = changed_settings(json.loads(saved.read_text()), wanted, ignore=["overwrite"])
        if changed:
            raise ValueError(
                f"{run_dir} holds an interrupted build with other settings ({changed}); run it again "
                f"with the same settings to resume it, or delete {run_dir} to start over"
            )
        return
    from codellama_hf.io import write_json

    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(saved, wanted, indent=1, sort_keys=True)


def make_executors(config, run_dir: Path, *, documents=None) -> list:
    """One datatrove executor per stage, each depending on the previous one."""
    kind = config.executor
    kind.check()
    executors = []
    for name, (pipeline, tasks) in stage_pipelines(config, run_dir, documents=documents).items():
        logs = str(run_dir / "logs" / name)
        depends = executors[-1] if executors else None
        workers = kind.workers if tasks > 1 else 1
        if kind.kind == "local":
            from datatrove.executor import LocalPipelineExecutor

            # fork: the pool starts at once (datatrove's default forkserver re-imports the world per worker)
            executor = LocalPipelineExecutor(
                pipeline, tasks=tasks, workers=workers, logging_dir=logs, depends=depends, start_method="fork"
            )
        elif kind.kind == "slurm":
            from datatrove.executor import SlurmPipelineExecutor

            executor = SlurmPipelineExecutor(
                pipeline,
                tasks=tasks,
                time=kind.time,
                partition=kind.partition,
                cpus_per_task=kind.cpus_per_task,
                mem_per_cpu_gb=kind.mem_per_cpu_gb,
                workers=workers,
                job_name=f"corpus-{name}",
                qos=kind.qos,
                env_command=kind.env_command,
                venv_path=kind.venv_path,
                sbatch_args=kind.sbatch_args,
                logging_dir=logs,
                depends=depends,
                with_srun=False,
                mail_user=None,
            )
        else:
            from datatrove.executor.ray import RayPipelineExecutor

            executor = RayPipelineExecutor(
                pipeline,
                tasks=tasks,
                workers=workers,
                logging_dir=logs,
                depends=depends,
                cpus_per_task=kind.cpus_per_task,
                mem_per_cpu_gb=kind.mem_per_cpu_gb,
            )
        executors.append(executor)
    return executors


def write_slurm_scripts(executors: list, run_dir: Path) -> Path:
    """Write each stage's sbatch script (datatrove's own, running its pickled stage) and `submit.sh`, which submits
    them in order with afterok dependencies. Stages whose tasks all completed are left out. Returns submit.sh."""
    import dill
    from dill import CONTENTS_FMODE

    lines = [
        "#!/bin/bash",
        "# Submits the corpus build stages in order; each waits for all job arrays of the previous one.",
        "set -eu",
        'dep=""',
    ]
    for executor in executors:
        ranks = executor.get_incomplete_ranks()
        name = Path(executor.logging_dir.path).name
        if not ranks:
            lines.append(f"# {name}: all {executor.world_size} tasks completed")
            continue
        executor.depends = None
        with executor.logging_dir.open("executor.pik", "wb") as handle:
            dill.dump(executor, handle, fmode=CONTENTS_FMODE)
        with executor.logging_dir.open("ranks_to_run.json", "w") as handle:
            json.dump(ranks, handle)
        array = min(len(ranks), executor.max_array_size) if executor.max_array_size != -1 else len(ranks)
        command = f"launch_pickled_pipeline {shlex.quote(executor.logging_dir.resolve_paths('executor.pik'))}"
        script = Path(executor.logging_dir.resolve_paths("launch_script.slurm"))
        script.write_text(executor.get_launch_file_contents(executor.get_sbatch_args(array), command))
        lines.append('ids=""')
        for offset in range(-(-len(ranks) // array)):  # datatrove's RUN_OFFSET: arrays of at most max_array_size
            lines.append(
                f'ids="$ids:$(sbatch --parsable --export=ALL,RUN_OFFSET={offset} $dep {shlex.quote(str(script))})"'
            )
        lines += [f'echo "{name}: job(s) ${{ids#:}} ({len(ranks)} tasks)"', 'dep="--dependency=afterok$ids"']
    submit = run_dir / "submit.sh"
    submit.write_text("\n".join(lines) + "\n")
    submit.chmod(0o755)
    return submit


# ---------------------------------------------------------------------------------------------------------------
# Finalize (the last stage)
# ---------------------------------------------------------------------------------------------------------------


def _skip_reasons(stage_stats: list[dict]) -> dict[str, int]:
    skipped: dict[str, int] = {}
    for step in stage_stats:
        for key, value in step.get("stats", {}).items():
            for prefix in ("skipped_", "dropped_"):
                if key.startswith(prefix):
                    reason = key[len(prefix) :]
                    skipped[reason] = skipped.get(reason, 0) + int(
                        value["total"] if isinstance(value, dict) else value
                    )
    return skipped


def _step_totals(stage_stats: list[dict], step_name: str, prefix: str) -> dict[str, int]:
    for step in stage_stats:
        if step.get("name", "").endswith(step_name):
            return {
                k[len(prefix) :]: int(v["total"] if isinstance(v, dict) else v)
                for k, v in step.get("stats", {}).items()
                if k.startswith(prefix)
            }
    return {}


def read_stage_stats(logging_dir: str | os.PathLike) -> list[dict]:
    """Per-step stats of one stage, summed over its tasks (from datatrove's stats/NNNNN.json files)."""
    from datatrove.utils.stats import PipelineStats

    folder = Path(logging_dir) / "stats"
    merged = PipelineStats()
    for path in sorted(folder.glob("*.json")):
        merged = merged + PipelineStats.from_json(json.loads(path.read_text()))
    return json.loads(merged.to_json()) if merged.stats else []


def summarize(run_dir: Path, tokenizer: str | None) -> dict:
    """corpus_summary.json's content from the stages' stats."""
    from codellama_hf.corpus.filters import FILTERS
    from codellama_hf.corpus.read_steps import SplitAndCount

    stats = {name: read_stage_stats(run_dir / "logs" / name) for name in STAGES[:-1]}
    counter = SplitAndCount.name
    docs = _step_totals(stats["write"], counter, "documents/")
    languages = {}
    for language in sorted(k for k in docs if k not in ("train", "validation")):
        languages[language] = {
            "documents": docs[language],
            "bytes": _step_totals(stats["write"], counter, "bytes/").get(language, 0),
            "tokens": _step_totals(stats["write"], counter, "tokens/").get(language) if tokenizer else None,
        }
    languages = dict(sorted(languages.items(), key=lambda kv: -kv[1]["bytes"]))
    dedup_file = run_dir / "work" / "remove" / "dedup_stats.json"
    dedup = json.loads(dedup_file.read_text()) if dedup_file.is_file() else {}
    order = {name: i for i, name in enumerate(FILTERS)}
    skipped = dict(sorted(_skip_reasons(stats["read"]).items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))
    return {
        "splits": {"train": docs.get("train", 0), "validation": docs.get("validation", 0)},
        "languages": languages,
        "skipped": skipped,
        "dedup": dedup,
        "tokenizer": tokenizer,
        "stages": stats,
    }


def _finalize(run_dir: str, out: str, config: dict) -> None:
    from codellama_hf.io import atomic_dir

    run_path = Path(run_dir)
    summary = summarize(run_path, config.get("tokenizer"))
    if not summary["splits"]["train"] + summary["splits"]["validation"]:
        names = ", ".join(str(s.get("label") or s.get("path") or s.get("dataset")) for s in config["sources"])
        raise EmptyCorpusError(f"no documents kept from {names}; skipped: {summary['skipped'] or 'nothing found'}")
    output = run_path / "output"
    with atomic_dir(out, overwrite=config.get("overwrite", False)) as tmp:
        for split in ("train", "validation"):
            (tmp / split).mkdir()
            for shard in sorted((output / split).glob("*.parquet")) if (output / split).is_dir() else []:
                os.replace(shard, tmp / split / shard.name)
        (tmp / "stats").mkdir()
        for name, stage in summary.pop("stages").items():
            (tmp / "stats" / f"{name}.json").write_text(json.dumps(stage, indent=1))
        (tmp / "build_config.json").write_text(json.dumps(config, indent=1, sort_keys=True, default=str))
        from codellama_hf.corpus.source_spec import CORPUS_MARKER

        (tmp / CORPUS_MARKER).write_text(json.dumps(summary, indent=2, sort_keys=True))


class Finalize(PipelineStep):
    """The last stage (one task): corpus_summary.json and per-stage stats, then the output appears as `out`."""

    type = "🏁 - FINALIZE"
    name = "🏁 corpus summary + publish"

    def __init__(self, run_dir: str, out: str, config: dict):
        super().__init__()
        self.run_dir, self.out, self.config = run_dir, out, config

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        with self.track_time():
            _finalize(self.run_dir, self.out, self.config)
        return iter(())
