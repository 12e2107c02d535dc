"""Documents from local folders and git checkouts (local or cloned): file listing, language by file name, reading
with the filters, licence detection, and a `datasets` cache of each folder's read.

Files get a language from their extension (or well-known name). Filters (filters.py) run while reading, and
everything that is not kept is counted by reason in a `SkipCounter`: bad input is skipped and counted, never a crash
halfway. Walking a folder follows symlinks but never visits a directory twice, so symlink loops are counted and cut.
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
from dataclasses import asdict
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm.auto import tqdm

from codellama_hf.corpus.filters import FilterConfig, SkipCounter
from codellama_hf.corpus.source_spec import COLUMNS, SourceSpec, features
from codellama_hf.io import write_json

log = logging.getLogger(__name__)

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


def language_of(path: str) -> str | None:
    """Language of a file from its name, or None for files that are neither code nor documentation."""
    name = PurePosixPath(path).name
    return FILENAMES.get(name) or EXTENSIONS.get(PurePosixPath(name).suffix.lower())


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
    binary and non-UTF-8 content after); the content rules are then a separate step (read_steps.QualityFilter).
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


def git_checkout(spec: SourceSpec, dest: Path) -> Path:
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
        root = git_checkout(spec, Path(tmp) / "repo") if spec.git else Path(spec.path)
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


def read_folder(spec: SourceSpec, filters: FilterConfig, stats: SkipCounter, streaming: bool):
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
