"""What a corpus source is: the spec users write (a folder, a data file, a saved dataset, `git+URL[@rev]` or a
`datasets` name) and the columns every source's rows share (`COLUMNS`, all strings: text, language, source, path,
license). Reading is in files.py (folders and git checkouts) and dataset_sources.py (everything `datasets` reads);
sources.read_sources puts them together.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path, PurePosixPath

COLUMNS = ("text", "language", "source", "path", "license")
SAVED_DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
CORPUS_MARKER = "corpus_summary.json"  # written last by `codellama-hf corpus build` (see build.py for the layout)
DATA_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}


def features():
    from datasets import Features, Value

    return Features({name: Value("string") for name in COLUMNS})


@dataclass
class SourceSpec:
    """One source. Given as a string (a folder, a data file, a saved dataset, `git+URL[@rev]` or a `datasets`
    name) or as a mapping with these fields."""

    path: str | None = None
    dataset: str | None = None
    git: str | None = None
    revision: str | None = None
    name: str | None = None  # `datasets` configuration name
    split: str = "train"
    text_column: str = "text"
    language: str | None = None
    languages: list[str] | None = None
    license: str | None = None
    label: str | None = None  # value of the `source` column; defaults to the path, URL or name
    streaming: bool | None = None  # `datasets` names stream by default, local data does not

    @classmethod
    def parse(cls, spec: str | os.PathLike | dict | SourceSpec) -> SourceSpec:
        if isinstance(spec, SourceSpec):
            return spec
        if isinstance(spec, os.PathLike):
            return cls(path=os.fspath(spec))
        if isinstance(spec, str):
            if not spec.strip():
                raise ValueError("empty source spec: give a folder, a data file, git+URL or a datasets name")
            if is_glob(spec) and Path(spec).parent.is_dir():
                return cls(path=spec)
            if spec.startswith("git+"):
                url, _, rev = spec[4:].rpartition("@") if "@" in spec[4:].split("/")[-1] else (spec[4:], "", "")
                return cls(git=url, revision=rev or None)
            if Path(spec).expanduser().exists() or spec.startswith((".", "/", "~")):
                return cls(path=str(Path(spec).expanduser()))
            return cls(dataset=spec)
        if isinstance(spec, dict):
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(spec) - known)
            if unknown:
                raise ValueError(f"source spec {spec!r} has unknown field(s) {unknown}; known fields: {sorted(known)}")
            out = cls(**spec)
            if sum(x is not None for x in (out.path, out.dataset, out.git)) != 1:
                raise ValueError(f"source spec {spec!r} needs exactly one of 'path', 'dataset' or 'git'")
            if out.path is not None:
                out.path = str(Path(out.path).expanduser())
            return out
        raise ValueError(f"source spec must be a string or a mapping, got {type(spec).__name__}: {spec!r}")

    @property
    def is_folder(self) -> bool:
        return self.git is not None or (
            self.path is not None
            and Path(self.path).is_dir()
            and not any((Path(self.path) / m).exists() for m in (*SAVED_DATASET_MARKERS, CORPUS_MARKER))
        )

    def display(self) -> str:
        return self.label or self.path or (f"git+{self.git}" if self.git else None) or self.dataset or "?"


def is_glob(path: str | None) -> bool:
    """A path with wildcards names data-file shards ("shards/*.jsonl"); each task of a build reads its share."""
    return path is not None and any(c in PurePosixPath(path).name for c in "*?[")


def check_exists(spec: SourceSpec) -> None:
    if spec.path is None:
        return
    if is_glob(spec.path):
        if not any(Path(spec.path).parent.glob(Path(spec.path).name)):
            raise FileNotFoundError(f"source {spec.path} matches no file")
    elif not Path(spec.path).exists():
        raise FileNotFoundError(f"source {spec.path} does not exist")


def corpus_output_files(path: Path, split: str) -> list[str] | None:
    """The parquet shards of one split of a `corpus build` output folder, or None if `path` is not one."""
    if not (path / CORPUS_MARKER).is_file():
        return None
    if split not in ("train", "validation"):
        raise ValueError(f"corpus {path} has splits 'train' and 'validation', not {split!r}")
    return sorted(str(p) for p in (path / split).glob("*.parquet"))
