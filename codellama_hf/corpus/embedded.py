"""The embedded default corpus: Table 1's data kinds, assembled from files every installation already has.

- "python": `.py` files of the standard library and of installed packages (site-packages);
- "code": every code file found there (Python, C/C++ headers and sources, Cython, CUDA, JavaScript, shell, ...);
- "nl_code" (natural language about code): docstrings of those Python files, Markdown/reStructuredText shipped in
  packages, the long descriptions (READMEs) in package metadata and the help topics of Python's own documentation;
- "nl" (natural language): plain-text documentation: READMEs, NEWS, licences and notes of Python, of installed
  packages and of the system (/usr/share/doc), kept only when it reads as prose (mostly letters and spaces).

Files are picked in an order fixed by a hash of (seed, source, path), pass the usual filters, are deduplicated
(exact + near, dedup.py) and split by file: a file's documents land in "validation" for about 5% of files, and the
assignment depends only on (seed, source, path), so "code" and "python" agree on which files are held out.
The result is saved under `cache_dir()/corpus/embedded/`, keyed by kind, seed, size and the Python installation,
so later calls load it in well under a second. Packages installed later do not change a built corpus (pass
`rebuild=True` for that); `embedded_manifest.json` beside the data records what was installed when it was built.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import importlib.metadata
import json
import logging
import re
import shutil
import sys
import sysconfig
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from codellama_hf.corpus.dedup import DedupConfig
from codellama_hf.corpus.files import language_of, list_files, read_document
from codellama_hf.corpus.filters import PROSE_LANGUAGES, FilterConfig, SkipCounter, share
from codellama_hf.corpus.source_spec import COLUMNS, features
from codellama_hf.io import atomic_dir

log = logging.getLogger(__name__)

KINDS = ("code", "python", "nl_code", "nl")
DOCUMENTS_PER_KIND = 2000
VALIDATION_FRACTION = 0.05
EMBEDDED_MAX_BYTES = 100_000  # keeps the first build fast; long files still reach 100 kB
EMBEDDED_VERSION = 2
MANIFEST = "embedded_manifest.json"
SYSTEM_DOCS = Path("/usr/share/doc")
PLAIN_TEXT_NAMES = (
    "readme",
    "news",
    "changes",
    "changelog",
    "history",
    "authors",
    "credits",
    "copyright",
    "license",
    "licence",
    "copying",
    "notice",
    "todo",
    "thanks",
)
MIN_PROSE_SHARE = 0.8  # letters and whitespace in an "nl" document
NOT_PROSE = re.compile(r"[^\w\s]+|[\d_]+")


@dataclass(frozen=True)
class Item:
    """A candidate document: where it lives and how to turn it into text."""

    root: Path
    rel: str
    source: str
    license: str | None
    extract: Callable[[Item, FilterConfig, SkipCounter], Iterator[tuple[str, str, str]]]  # (path, language, text)


# ---------------------------------------------------------------------------------------------------------------
# Where things are
# ---------------------------------------------------------------------------------------------------------------


def _roots() -> list[tuple[Path, str]]:
    """(folder, source label) for the standard library and each site-packages folder."""
    paths = sysconfig.get_paths()
    stdlib = Path(paths["stdlib"])
    out = [(stdlib, "stdlib")]
    for key in ("purelib", "platlib"):
        folder = Path(paths[key])
        if folder.is_dir() and all(folder != f for f, _ in out):
            out.append((folder, "site-packages"))
    return out


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _distributions() -> tuple[dict[str, str], dict[str, tuple[str, str | None]]]:
    """What is installed: (top-level import name -> distribution, normalized name -> (distribution, licence))."""
    licenses = {}
    for dist in importlib.metadata.distributions():
        meta = dist.metadata
        license = meta.get("License-Expression")
        if not license:
            text = (meta.get("License") or "").strip()
            license = text if text and "\n" not in text and len(text) <= 60 else None
        if not license:
            classifiers = [c.split(" :: ")[-1] for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
            license = ", ".join(classifiers) or None
        licenses[_normalize(meta["Name"])] = (meta["Name"], license)
    owners = {top: dists[0] for top, dists in importlib.metadata.packages_distributions().items()}
    return owners, licenses


def _listing(stats: SkipCounter) -> list[tuple[Path, str, str, str | None]]:
    """(root, relative path, source, licence) of every file in the standard library and site-packages."""
    owners, licenses = _distributions()
    out = []
    for root, label in _roots():
        for rel in list_files(root, stats):
            top = rel.split("/", 1)[0]
            if label == "stdlib":
                if top not in ("site-packages", "dist-packages"):
                    out.append((root, rel, "stdlib", "PSF-2.0"))
                continue
            if top.endswith((".dist-info", ".egg-info")):
                dist = top.rsplit(".", 1)[0].split("-")[0]
            else:
                dist = owners.get(Path(top).stem, Path(top).stem)
            dist, license = licenses.get(_normalize(dist), (dist, None))
            out.append((root, rel, f"site-packages/{dist}", license))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Extractors: one file -> zero or more (path, language, text)
# ---------------------------------------------------------------------------------------------------------------


def _whole_file(item: Item, filters: FilterConfig, stats: SkipCounter):
    language = language_of(item.rel)
    text = read_document(item.root, item.rel, language, filters, stats)
    if text is not None:
        yield item.rel, language, text


_DOCUMENTED = (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.If, ast.Try, ast.ExceptHandler, ast.With)


def _docstrings(item: Item, filters: FilterConfig, stats: SkipCounter):
    """All docstrings of a Python file (module, classes, functions), one document per file."""
    source = read_document(item.root, item.rel, "python", filters, stats)
    if source is None:
        return
    if '"""' not in source and "'''" not in source:  # parsing is the slow part; most docstrings are triple-quoted
        stats["too_small"] += 1
        return
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        stats["unparsable"] += 1
        return
    docs, stack = [], [tree]
    while stack:  # definitions only: statements' bodies, never expressions
        node = stack.pop()
        if isinstance(node, _DOCUMENTED) and (doc := ast.get_docstring(node)):
            docs.append(doc)
        for block in ("body", "orelse", "finalbody", "handlers"):
            stack.extend(n for n in reversed(getattr(node, block, ())) if isinstance(n, _SCOPES))
    text = "\n\n".join(docs)
    if reason := filters.check_text(text, "docstring"):
        stats[reason] += 1
        return
    yield item.rel, "docstring", text


def _metadata_description(item: Item, filters: FilterConfig, stats: SkipCounter):
    """The long description (usually the README) inside a distribution's METADATA."""
    try:
        raw = (item.root / item.rel).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        stats["unreadable"] += 1
        return
    headers, _, body = raw.partition("\n\n")
    kind = next((h.split(":", 1)[1] for h in headers.splitlines() if h.startswith("Description-Content-Type:")), "")
    language = "markdown" if "markdown" in kind else "restructuredtext" if "rst" in kind else "text"
    if reason := filters.check_text(body, language):
        stats[reason] += 1
        return
    yield item.rel, language, body.strip()


def _pydoc_topics(item: Item, filters: FilterConfig, stats: SkipCounter):
    """Python's own documentation: the help topics in pydoc_data/topics.py, one document per topic."""
    try:
        topics = ast.literal_eval(ast.parse((item.root / item.rel).read_text(encoding="utf-8")).body[-1].value)
    except (OSError, SyntaxError, ValueError, AttributeError, IndexError):
        stats["unparsable"] += 1
        return
    for name in sorted(topics):
        if not (reason := filters.check_text(topics[name], "text")):
            yield f"{item.rel}#{name}", "text", topics[name]
        else:
            stats[reason] += 1


def _prose(item: Item, filters: FilterConfig, stats: SkipCounter):
    """A plain-text file (gzip-compressed ones too) that reads as prose."""
    path = item.root / item.rel
    try:
        data = gzip.decompress(path.read_bytes()) if item.rel.endswith(".gz") else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile):
        stats["unreadable"] += 1
        return
    text, reason = filters.check_bytes(data)
    if reason is None:
        reason = filters.check_text(text, "text")
    if reason is None and share(NOT_PROSE, text) < MIN_PROSE_SHARE:
        reason = "not_prose"
    if reason:
        stats[reason] += 1
        return
    yield item.rel.removesuffix(".gz"), "text", text


def _is_plain_text(rel: str) -> bool:
    name = PurePosixPath(rel).name.lower().removesuffix(".gz")
    suffix = PurePosixPath(name).suffix
    return suffix == ".txt" or (name.startswith(PLAIN_TEXT_NAMES) and suffix in ("", ".debian"))


def _items(kind: str, stats: SkipCounter) -> list[Item]:
    items = []
    for root, rel, source, license in _listing(stats):
        language = language_of(rel)
        top = rel.split("/", 1)[0]
        is_code = language is not None and language not in PROSE_LANGUAGES
        if (kind == "python" and rel.endswith(".py")) or (kind == "code" and is_code):
            items.append(Item(root, rel, source, license, _whole_file))
        elif kind == "nl_code":
            if rel.endswith(".py"):
                extract = _pydoc_topics if rel == "pydoc_data/topics.py" else _docstrings
                items.append(Item(root, rel, source, license, extract))
            elif language in ("markdown", "restructuredtext") and not top.endswith(".dist-info"):
                items.append(Item(root, rel, source, license, _whole_file))
            elif top.endswith(".dist-info") and rel.endswith("/METADATA"):
                items.append(Item(root, rel, source, license, _metadata_description))
        elif kind == "nl" and _is_plain_text(rel) and not rel.endswith("entry_points.txt"):
            items.append(Item(root, rel, source, license, _prose))
    if kind == "nl" and SYSTEM_DOCS.is_dir():
        for rel in list_files(SYSTEM_DOCS, stats):
            if _is_plain_text(rel):
                items.append(Item(SYSTEM_DOCS, rel, f"system-doc/{rel.split('/', 1)[0]}", None, _prose))
    return items


# ---------------------------------------------------------------------------------------------------------------
# Building and caching
# ---------------------------------------------------------------------------------------------------------------


def _hash_fraction(*parts) -> float:
    digest = hashlib.sha256("\0".join(map(str, parts)).encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def is_validation(
    seed: int, source: str, path: str, fraction: float = VALIDATION_FRACTION, text: str | None = None
) -> bool:
    """The held-out rule: a file is in validation iff its (seed, source, file) hash falls in the first `fraction`.

    A row without a path (a JSONL or `datasets` source whose records carry only text) is held out by its own
    (seed, source, text) hash instead: keyed by the path "" that they all share, a whole source would land in one
    split, all of it validation for ~5% of sources. The text, not the row's index, so that the split does not
    depend on the order rows are read in or on `num_proc`; identical texts share a split. Rows with a path keep the
    by-file hash, so existing held-out files do not move."""
    file = (path or "").split("#", 1)[0]
    if not file and text is not None:
        return _hash_fraction("split-row", seed, source, text) < fraction
    return _hash_fraction("split", seed, source, file) < fraction


def _cache_key(kind: str, seed: int, documents: int) -> str:
    """What the corpus depends on, minus the installed packages: installing one does not silently change it."""
    blob = json.dumps([EMBEDDED_VERSION, kind, seed, documents, sys.version, sys.prefix])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _manifest(kind: str, seed: int, dedup, stats: SkipCounter) -> str:
    """Provenance saved beside the data: what was installed when it was built, what was skipped."""
    dists = sorted(f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions())
    return json.dumps(
        {
            "kind": kind,
            "seed": seed,
            "python": sys.version,
            "distributions": dists,
            "dedup": vars(dedup),
            "skipped": dict(stats),
        },
        indent=1,
    )


def build_embedded(kind: str, *, seed: int = 0, documents: int = DOCUMENTS_PER_KIND, out_dir: Path | None = None):
    """Build one kind of the embedded corpus as a DatasetDict(train, validation) and save it to `out_dir`."""
    from datasets import Dataset, DatasetDict

    if kind not in KINDS:
        raise ValueError(f"unknown embedded corpus kind {kind!r}; choose one of {KINDS}")
    stats = SkipCounter()
    items = sorted(_items(kind, stats), key=lambda it: _hash_fraction("order", seed, it.source, it.rel))
    filters = FilterConfig(max_bytes=EMBEDDED_MAX_BYTES)
    rows = {name: [] for name in COLUMNS}
    wanted = int(documents * 1.15) + 10  # room for what dedup removes
    with tqdm(total=wanted, desc=f"embedded corpus: {kind}", unit="doc", leave=False, mininterval=1.0) as bar:
        for item in items:
            for path, language, text in item.extract(item, filters, stats):
                for name, value in zip(COLUMNS, (text, language, item.source, path, item.license), strict=False):
                    rows[name].append(value)
                bar.update()
            if len(rows["text"]) >= wanted:
                break
    if not rows["text"]:
        raise RuntimeError(f"no {kind!r} documents found on this machine (skipped: {dict(stats)})")
    from codellama_hf.corpus.build import deduplicate

    dataset, dedup = deduplicate(Dataset.from_dict(rows, features=features()), DedupConfig())
    dataset = dataset.select(range(min(documents, len(dataset))))
    held_out = [is_validation(seed, s, p) for s, p in zip(dataset["source"], dataset["path"], strict=False)]
    splits = DatasetDict(
        train=dataset.select([i for i, v in enumerate(held_out) if not v]),
        validation=dataset.select([i for i, v in enumerate(held_out) if v]),
    )
    log.info("embedded %s: %s, dedup %s, skipped %s", kind, {k: len(v) for k, v in splits.items()}, dedup, stats)
    if out_dir is not None:
        save_atomic(splits, out_dir, extra_files={MANIFEST: _manifest(kind, seed, dedup, stats)})
    return splits


def save_atomic(dataset, out_dir: Path, *, extra_files: dict[str, str] | None = None, overwrite: bool = False) -> Path:
    """save_to_disk into a temporary sibling, then rename: readers never see a half-written dataset.

    `extra_files` (name -> text) are written beside the dataset first. With `overwrite`, an existing folder is
    replaced only once the new one is complete.
    """
    with atomic_dir(out_dir, overwrite=overwrite, shared=not overwrite) as tmp:
        dataset.save_to_disk(str(tmp))
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
    return Path(out_dir)


def embedded_corpus(
    kind: str, split: str = "train", *, max_documents: int | None = None, seed: int = 0, rebuild: bool = False
):
    """One kind of the embedded default corpus ("code", "python", "nl_code", "nl") as a `datasets.Dataset`.

    Built on first use from files on this machine (well under a minute), then loaded from the cache; the cache
    does not follow later package installs (pass `rebuild=True` for that).
    Columns: text, language, source, path, license (None when unknown). `max_documents` takes the first N of the
    split, whose order is already a seeded shuffle.
    """
    from datasets import load_from_disk

    from codellama_hf.assets import cache_dir

    if kind not in KINDS:
        raise ValueError(f"unknown embedded corpus kind {kind!r}; choose one of {KINDS}")
    if split not in ("train", "validation"):
        raise ValueError(f"embedded corpus split must be 'train' or 'validation', got {split!r}")
    if max_documents is not None and max_documents < 1:
        raise ValueError(f"max_documents must be a positive number, got {max_documents}")
    folder = cache_dir() / "corpus" / "embedded"
    target = folder / f"{kind}-seed{seed}-{_cache_key(kind, seed, DOCUMENTS_PER_KIND)}"
    if rebuild and target.exists():
        shutil.rmtree(target)
    if not target.exists():
        build_embedded(kind, seed=seed, out_dir=target)
        for stale in folder.glob(f"{kind}-seed{seed}-*"):  # older versions of the same corpus
            if stale != target:
                shutil.rmtree(stale, ignore_errors=True)
    dataset = load_from_disk(str(target))[split]
    if max_documents is not None and max_documents < len(dataset):
        dataset = dataset.select(range(max_documents))
    return dataset
