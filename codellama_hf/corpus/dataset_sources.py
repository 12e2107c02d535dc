"""Documents from everything `datasets` reads: Hub dataset names (streamed by default), data files and shard globs
(jsonl, json, parquet, csv, arrow), folders saved with `save_to_disk`, and the output of `codellama-hf corpus build`.

Each row takes its language from the spec, a `language`/`lang` column or its path, and its path and licence from
the usual column names of code datasets (The Stack's `max_stars_repo_path`, ...). Filters run in a `map`, and rows
that are not kept are counted by reason in the `SkipCounter`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path, PurePosixPath

from codellama_hf.corpus.files import language_of
from codellama_hf.corpus.filters import FilterConfig, SkipCounter
from codellama_hf.corpus.source_spec import (
    COLUMNS,
    DATA_FILE_BUILDERS,
    SourceSpec,
    check_exists,
    corpus_output_files,
    features,
    is_glob,
)

log = logging.getLogger(__name__)


def _first(row: dict, *names: str):
    for name in names:
        value = row.get(name)
        if value:
            return ", ".join(map(str, value)) if isinstance(value, list) else str(value)
    return None


def _to_record(row: dict, *, spec: dict, filters: FilterConfig) -> dict:
    """One dataset row in our columns, plus `_skip`: the name of the rule that rejects it (or None)."""
    text = row.get(spec["text_column"])
    path = _first(row, "path", "max_stars_repo_path", "file_path", "filename") or ""
    language = spec["language"] or _first(row, "language", "lang") or language_of(path) or "unknown"
    language = language.lower()
    if not isinstance(text, str):
        reason = "missing_text"
        text = ""
    elif spec["languages"] and language not in spec["languages"]:
        reason = "other_language"
    else:
        reason = filters.check_text(text, language, path)
    return {
        "text": text,
        "language": language,
        # a corpus build's output already names each row's source
        "source": (spec["corpus"] and not spec["label"] and row.get("source")) or spec["display"],
        "path": path,
        "license": spec["license"] or _first(row, "license", "licenses", "max_stars_repo_licenses"),
        "_skip": reason,
    }


def _load_dataset_source(spec: SourceSpec, streaming: bool):
    import datasets

    check_exists(spec)
    if spec.path is not None and is_glob(spec.path):
        suffix = PurePosixPath(spec.path).suffix.lower()
        if suffix not in DATA_FILE_BUILDERS:
            raise ValueError(f"source {spec.path}: shards must be one of {sorted(DATA_FILE_BUILDERS)}")
        files = sorted(str(p) for p in Path(spec.path).parent.glob(Path(spec.path).name))
        return datasets.load_dataset(DATA_FILE_BUILDERS[suffix], data_files=files, split="train", streaming=streaming)
    if spec.path is not None:
        path = Path(spec.path)
        if not path.exists():
            raise FileNotFoundError(f"source {path} does not exist")
        if (files := corpus_output_files(path, spec.split)) is not None:
            if not files:
                return datasets.Dataset.from_dict({name: [] for name in COLUMNS}, features=features())
            return datasets.load_dataset("parquet", data_files=files, split="train", streaming=streaming)
        if path.is_dir():  # a dataset saved with save_to_disk
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                if spec.split not in ds:
                    raise ValueError(f"saved dataset {path} has splits {list(ds)}, not {spec.split!r}")
                ds = ds[spec.split]
            return ds.to_iterable_dataset() if streaming else ds
        builder = DATA_FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(
                f"source {path}: unknown data file type {path.suffix!r}; use one of {sorted(DATA_FILE_BUILDERS)}, "
                "or a folder of code files"
            )
        return datasets.load_dataset(builder, data_files=str(path), split="train", streaming=streaming)
    try:
        return datasets.load_dataset(
            spec.dataset, spec.name, split=spec.split, revision=spec.revision, streaming=streaming
        )
    except (FileNotFoundError, ConnectionError, ValueError) as err:
        raise ValueError(f"could not load dataset source {spec.dataset!r}: {err}") from err


def read_dataset(spec: SourceSpec, filters: FilterConfig, stats: SkipCounter, streaming: bool, num_proc):
    ds = _load_dataset_source(spec, streaming)
    columns = list(ds.column_names or [])
    if columns and spec.text_column not in columns:
        raise ValueError(
            f"source {spec.display()} has no text column {spec.text_column!r} (columns: {columns}); "
            "set text_column in the source spec"
        )
    corpus = spec.path is not None and corpus_output_files(Path(spec.path), spec.split) is not None
    kwargs = {"spec": {**asdict(spec), "display": spec.display(), "corpus": corpus}, "filters": filters}
    if streaming:
        mapped = ds.map(_to_record, fn_kwargs=kwargs, remove_columns=columns or None)

        def keep(row, _stats=stats):
            if row["_skip"]:
                _stats[row["_skip"]] += 1
            return row["_skip"] is None

        return mapped.filter(keep).remove_columns("_skip").cast(features())
    mapped = ds.map(_to_record, fn_kwargs=kwargs, remove_columns=columns, num_proc=num_proc, desc="filter")
    skips = mapped["_skip"]
    stats.update(reason for reason in skips if reason)
    keep = [i for i, reason in enumerate(skips) if reason is None]
    if not keep:
        stats["empty_source"] += 1
        log.warning("source %s gave no documents (%d rows)", spec.display(), len(mapped))
    return mapped.select(keep).remove_columns("_skip").cast(features())
