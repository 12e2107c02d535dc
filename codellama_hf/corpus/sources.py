"""Where documents come from: local folders, git checkouts (local or cloned) and `datasets` names, paths or files.

Every source becomes rows with the same columns (`COLUMNS`, all strings): text, language, source, path, license.
Files get a language from their extension (or well-known name); rows of a dataset take theirs from the spec, a
`language`/`lang` column or their path. Filters (filters.py) run while reading, and everything that is not kept is
counted by reason in a `SkipCounter`: bad input is skipped and counted, never a crash halfway.

Walking a folder follows symlinks but never visits a directory twice, so symlink loops are counted and cut.
A folder that is a git checkout is listed with `git ls-files`, which honours .gitignore.

Map-style reads of local folders are cached by `datasets` under a fingerprint of the file listing (names, sizes,
modification times) and the filter settings; the skip counts of a cached read are kept beside it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm.auto import tqdm

from codellama_hf.corpus.filters import FilterConfig, SkipCounter
from codellama_hf.io import write_json

log = logging.getLogger(__name__)

COLUMNS = ("text", "language", "source", "path", "license")
# Bump when reading or filtering changes what a cached read contains.
READER_VERSION = 1

EXTENSIONS = {
    ".py": "python",
    ".pyx": "cython",
    ".pxd": "cython",
    ".c": "c",
    ".h": "c",
    ".cc": "cpp",
    ".cpp": "cpp",
    ".cxx": "cpp",
    ".hpp": "cpp",
    ".hh": "cpp",
    ".hxx": "cpp",
    ".cu": "cuda",
    ".cuh": "cuda",
    ".java": "java",
    ".js": "javascript",
    ".mjs": "javascript",
    ".cjs": "javascript",
    ".jsx": "javascript",
    ".ts": "typescript",
    ".tsx": "typescript",
    ".go": "go",
    ".rs": "rust",
    ".rb": "ruby",
    ".php": "php",
    ".cs": "c-sharp",
    ".sh": "shell",
    ".bash": "shell",
    ".zsh": "shell",
    ".pl": "perl",
    ".pm": "perl",
    ".lua": "lua",
    ".scala": "scala",
    ".kt": "kotlin",
    ".swift": "swift",
    ".r": "r",
    ".jl": "julia",
    ".f90": "fortran",
    ".f": "fortran",
    ".hs": "haskell",
    ".ml": "ocaml",
    ".sql": "sql",
    ".html": "html",
    ".htm": "html",
    ".css": "css",
    ".tex": "tex",
    ".cmake": "cmake",
    ".yaml": "yaml",
    ".yml": "yaml",
    ".toml": "toml",
    ".md": "markdown",
    ".markdown": "markdown",
    ".rst": "restructuredtext",
    ".txt": "text",
}
FILENAMES = {
    "Makefile": "makefile",
    "makefile": "makefile",
    "GNUmakefile": "makefile",
    "Dockerfile": "dockerfile",
    "CMakeLists.txt": "cmake",
    "README": "text",
    "NEWS": "text",
    "AUTHORS": "text",
    "LICENSE": "text",
    "COPYING": "text",
    "CHANGES": "text",
    "HISTORY": "text",
    "copyright": "text",
}
# Never descended into: version-control metadata and caches, not content.
SKIP_DIRS = frozenset({".git", ".hg", ".svn", "__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache", ".tox"})
SAVED_DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
CORPUS_MARKER = "corpus_summary.json"  # written last by `codellama-hf corpus build` (see build.py for the layout)
DATA_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}


def features():
    from datasets import Features, Value

    return Features({name: Value("string") for name in COLUMNS})


def language_of(path: str) -> str | None:
    """Language of a file from its name, or None for files that are neither code nor documentation."""
    name = PurePosixPath(path).name
    return FILENAMES.get(name) or EXTENSIONS.get(PurePosixPath(name).suffix.lower())


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


# ---------------------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------------------


def list_files(root: Path, stats: SkipCounter) -> list[str]:
    """Relative POSIX paths of the regular files under `root`, sorted; git checkouts list tracked files only."""
    if (root / ".git").exists() and shutil.which("git"):
        result = subprocess.run(["git", "-C", str(root), "ls-files", "-z"], capture_output=True, check=False)
        if result.returncode == 0:
            names = [n for n in result.stdout.decode("utf-8", "surrogateescape").split("\0") if n]
            return sorted(n for n in names if not set(PurePosixPath(n).parts) & SKIP_DIRS)
        log.warning("git ls-files failed in %s (%s); walking the folder instead", root, result.stderr.strip())
    files, seen, stack = [], set(), [(root, "")]
    while stack:
        folder, rel = stack.pop()
        try:
            st = os.stat(folder)
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as err:
            stats["symlink_loop" if err.errno == errno.ELOOP else "unreadable"] += 1
            log.warning("cannot list %s: %s", folder, err)
            continue
        if (st.st_dev, st.st_ino) in seen:  # a symlink back to a folder already walked
            stats["symlink_loop"] += 1
            log.info("skipping %s: symlink to a folder already visited (loop or alias)", folder)
            continue
        seen.add((st.st_dev, st.st_ino))
        subfolders = []
        for entry in entries:
            try:
                if entry.is_dir():
                    if entry.name not in SKIP_DIRS:
                        subfolders.append((Path(entry.path), f"{rel}{entry.name}/"))
                elif entry.is_file():
                    files.append(rel + entry.name)
                elif entry.is_symlink():
                    os.stat(entry.path)  # raises for broken links and loops
            except OSError as err:
                stats["symlink_loop" if err.errno == errno.ELOOP else "broken_link"] += 1
                log.warning("skipping %s: %s", entry.path, err)
        stack.extend(reversed(subfolders))
    return sorted(files)


def read_document(
    root: Path, rel: str, language: str, filters: FilterConfig, stats: SkipCounter, *, content_rules: bool = True
) -> str | None:
    """The text of one file if it passes the filters; otherwise None, with the reason counted.

    Without `content_rules`, only what needs the file itself is checked here (path and size before reading,
    binary and non-UTF-8 content after); the content rules are then a separate step (steps.QualityFilter).
    """
    full = root / rel
    try:
        size = full.stat().st_size
    except OSError as err:
        stats["unreadable"] += 1
        log.warning("cannot read %s: %s", full, err)
        return None
    if reason := filters.check_path(rel, size):
        stats[reason] += 1
        return None
    try:
        data = full.read_bytes()
    except OSError as err:
        stats["unreadable"] += 1
        log.warning("cannot read %s: %s", full, err)
        return None
    text, reason = filters.check_bytes(data)
    if reason is None and content_rules:
        reason = filters.check_text(text, language)
    if reason:
        stats[reason] += 1
        return None
    return text


LICENSE_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "LICENCE", "COPYING", "COPYING.txt", "LICENSE.rst")
_LICENSE_SIGNATURES = (  # (SPDX id, phrases that must all occur), most specific first
    ("Apache-2.0", ("apache license", "version 2.0")),
    ("AGPL-3.0", ("gnu affero general public license", "version 3")),
    ("LGPL-3.0", ("gnu lesser general public license", "version 3")),
    ("LGPL-2.1", ("gnu lesser general public license", "version 2.1")),
    ("GPL-3.0", ("gnu general public license", "version 3")),
    ("GPL-2.0", ("gnu general public license", "version 2")),
    ("MPL-2.0", ("mozilla public license", "2.0")),
    ("MIT", ("permission is hereby granted, free of charge",)),
    ("BSD-3-Clause", ("redistribution and use in source and binary forms", "neither the name")),
    ("BSD-2-Clause", ("redistribution and use in source and binary forms",)),
    ("ISC", ("permission to use, copy, modify, and/or distribute this software",)),
    ("Unlicense", ("this is free and unencumbered software",)),
)


def detect_license(text: str) -> str | None:
    """SPDX id of a licence text from its tell-tale phrases, or None."""
    lowered = " ".join(text.lower().split())
    for spdx, phrases in _LICENSE_SIGNATURES:
        if all(p in lowered for p in phrases):
            return spdx
    return None


def folder_license(root: Path) -> str | None:
    for name in LICENSE_FILES:
        try:
            return detect_license((root / name).read_text(encoding="utf-8", errors="replace")[:20000])
        except OSError:
            continue
    return None


def _git_checkout(spec: SourceSpec, dest: Path) -> Path:
    """Shallow clone of `spec.git` (at `spec.revision`) into dest."""
    if not shutil.which("git"):
        raise RuntimeError(f"source git+{spec.git} needs the git executable on PATH")
    cmd = ["git", "clone", "--quiet", "--depth", "1"]
    cmd += ["--branch", spec.revision] if spec.revision else []
    result = subprocess.run([*cmd, spec.git, str(dest)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"could not clone git+{spec.git}: {result.stderr.strip()[-500:]}")
    return dest


def iter_folder(spec: SourceSpec, filters: FilterConfig, stats: SkipCounter) -> Iterator[dict[str, Any]]:
    """Documents of a local folder or git repository, in sorted path order."""
    with tempfile.TemporaryDirectory(prefix="codellama_hf-git-") as tmp:
        root = _git_checkout(spec, Path(tmp) / "repo") if spec.git else Path(spec.path)
        if not root.is_dir():
            raise FileNotFoundError(f"source folder {root} does not exist")
        files = list_files(root, stats)
        license = spec.license or folder_license(root)
        label = spec.display()
        kept = 0
        for rel in tqdm(files, desc=f"read {label}", unit="file", leave=False, mininterval=1.0):
            language = language_of(rel)
            if language is None:
                stats["other_extension"] += 1
                continue
            if spec.languages and language not in spec.languages:
                stats["other_language"] += 1
                continue
            text = read_document(root, rel, language, filters, stats)
            if text is not None:
                kept += 1
                yield {"text": text, "language": language, "source": label, "path": rel, "license": license}
        if not kept:
            stats["empty_source"] += 1
            log.warning("source %s gave no documents (%d files listed)", label, len(files))


def _folder_fingerprint(spec: SourceSpec, filters: FilterConfig) -> str:
    """Hash of a folder's listing (names, sizes, mtimes) and the filter settings: a cache key for its read."""
    root = Path(spec.path)
    digest = hashlib.sha256(json.dumps([READER_VERSION, asdict(spec), repr(filters)], default=str).encode())
    for rel in list_files(root, SkipCounter()):
        try:
            st = (root / rel).stat()
            digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        except OSError:
            digest.update(f"{rel}\0unreadable\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:32]


def _generate_folder(spec: dict, filters: FilterConfig, stats: SkipCounter, sidecar: str | None = None):
    counts = SkipCounter()
    yield from iter_folder(SourceSpec(**spec), filters, counts)
    stats.update(counts)
    if sidecar:  # remember the counts for cached re-reads, which do not run this generator
        write_json(sidecar, counts, indent=None)


def _read_folder(spec: SourceSpec, filters: FilterConfig, stats: SkipCounter, streaming: bool):
    """A folder as a Dataset (cached by listing fingerprint) or, streaming, as an IterableDataset."""
    from datasets import IterableDataset

    if spec.path is not None and not Path(spec.path).is_dir():
        raise FileNotFoundError(f"source folder {spec.path} does not exist")
    gen_kwargs = {"spec": asdict(spec), "filters": filters, "stats": stats}
    if streaming:
        return IterableDataset.from_generator(_generate_folder, features=features(), gen_kwargs=gen_kwargs)
    if spec.git:  # a fresh clone each time: nothing to key a cache on before cloning
        return dataset_from_generator(_generate_folder, gen_kwargs=gen_kwargs, fingerprint=uuid.uuid4().hex)
    from codellama_hf.assets import cache_dir

    fingerprint = _folder_fingerprint(spec, filters)
    sidecar = cache_dir() / "corpus" / "reads" / f"{fingerprint}.json"
    ran = SkipCounter()
    ds = dataset_from_generator(
        _generate_folder, gen_kwargs={**gen_kwargs, "stats": ran, "sidecar": str(sidecar)}, fingerprint=fingerprint
    )
    stats.update(ran if ran or not sidecar.exists() else json.loads(sidecar.read_text()))
    return ds


def dataset_from_generator(generator, *, gen_kwargs: dict, fingerprint: str):
    """Dataset.from_generator that gives an empty dataset, not an error, when the generator yields nothing."""
    from datasets import Dataset

    try:
        return Dataset.from_generator(generator, features=features(), gen_kwargs=gen_kwargs, fingerprint=fingerprint)
    except ValueError as err:
        if "corresponds to no data" not in str(err):
            raise
        return Dataset.from_dict({name: [] for name in COLUMNS}, features=features())


# ---------------------------------------------------------------------------------------------------------------
# `datasets` sources
# ---------------------------------------------------------------------------------------------------------------


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


def corpus_output_files(path: Path, split: str) -> list[str] | None:
    """The parquet shards of one split of a `corpus build` output folder, or None if `path` is not one."""
    if not (path / CORPUS_MARKER).is_file():
        return None
    if split not in ("train", "validation"):
        raise ValueError(f"corpus {path} has splits 'train' and 'validation', not {split!r}")
    return sorted(str(p) for p in (path / split).glob("*.parquet"))


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


def _read_dataset(spec: SourceSpec, filters: FilterConfig, stats: SkipCounter, streaming: bool, num_proc):
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


# ---------------------------------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------------------------------


def read_sources(
    specs,
    *,
    filters: FilterConfig | None = None,
    stats: SkipCounter | None = None,
    streaming: bool = False,
    num_proc: int | None = None,
):
    """Read sources into one `datasets.Dataset` (or an `IterableDataset` when any source streams).

    `specs` is one spec or a list (see SourceSpec). Filtered or unreadable documents are counted in `stats` (a
    SkipCounter you pass in); for streamed sources the counts grow as the result is iterated. Raises ValueError when
    no source gives any document, naming the sources and the skip counts.
    """
    import datasets

    if isinstance(specs, (str, os.PathLike, dict, SourceSpec)):
        specs = [specs]
    specs = [SourceSpec.parse(s) for s in specs or []]
    if not specs:
        raise ValueError("no sources given: pass folders, data files, git+URL or datasets names")
    filters = filters or FilterConfig()
    stats = stats if stats is not None else SkipCounter()
    parts = []
    for spec in specs:
        stream = spec.streaming if spec.streaming is not None else (streaming or spec.dataset is not None)
        if spec.is_folder:
            part = _read_folder(spec, filters, stats, stream)
        else:
            part = _read_dataset(spec, filters, stats, stream, num_proc)
        parts.append(part)
    if any(isinstance(p, datasets.IterableDataset) for p in parts):
        parts = [p.to_iterable_dataset() if isinstance(p, datasets.Dataset) else p for p in parts]
        return datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    total = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    if len(total) == 0:
        names = ", ".join(s.display() for s in specs)
        raise ValueError(f"no documents kept from {names}; skipped: {dict(stats.table_rows()) or 'nothing found'}")
    return total
