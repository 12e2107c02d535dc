"""The corpus builder's datatrove pipeline steps: reading sources, the project's filters, signatures, clusters.

Documents travel as datatrove `Document`s whose metadata holds the corpus columns (language, source, path, license).
Every document that is not kept is counted in the step's stats under the reason: `skipped_<reason>` for what a
reader could not turn into a document (unreadable, binary, non-UTF-8, other extension, ...), `dropped_<reason>` for
what a filter step removed.

Deduplication runs datatrove's four MinHash stages with two of them replaced:
- `Signatures` (stage 1) is a pass-through step: while the documents flow to the writer of the filtered shard it
  writes, per task, the near-duplicate bucket files and the exact-duplicate bucket in datatrove's
  `bucket_XXX/NNNNN.minhash.sig` format (sorted by datatrove's own code), plus the full signature and the cluster
  key of every document (`full/NNNNN.u32`, `keys/NNNNN.u64`, read back memory-mapped);
- datatrove's `MinhashDedupBuckets` (stage 2) finds candidate pairs bucket by bucket (one task per band), merging
  the sorted files of all tasks with bounded memory;
- `DuplicateClusters` (stage 3) is datatrove's union-find over the candidate pairs, with two changes: a near pair
  must reach the Jaccard threshold on the full signatures, and each cluster keeps its member with the smallest
  `document_key` (a hash of source and path), so the kept documents do not depend on the number of tasks. It
  writes datatrove's `NNNNNN.remove` files;
- datatrove's `MinhashDedupFilter` (stage 4) drops them while the shard is read again.
Memory: no step holds more than one task's documents in flight plus, in stage 3, the duplicate pairs.
"""

from __future__ import annotations

import json
import struct
from collections import Counter
from functools import partial
from pathlib import Path

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.io import get_datafolder
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.readers import ParquetReader
from datatrove.utils.binaryio import read_tuples_from_file
from datatrove.utils.hashing import HashConfig

from codellama_hf.corpus.dedup import (
    EXACT_WORDS,
    CodeWordTokenizer,
    DedupConfig,
    document_key,
    exact_digest,
    minhash,
)
from codellama_hf.corpus.filters import FilterConfig, SkipCounter
from codellama_hf.corpus.sources import (
    DATA_FILE_BUILDERS,
    SAVED_DATASET_MARKERS,
    SourceSpec,
    check_exists,
    folder_license,
    is_glob,
    language_of,
    list_files,
    read_document,
)

FIELDS = ("language", "source", "path", "license")


def near_config(config: DedupConfig) -> MinhashConfig:
    bands, rows = config.bands()
    return MinhashConfig(
        n_grams=config.ngram,
        num_buckets=bands,
        hashes_per_bucket=rows,
        seed=config.seed,
        hash_config=HashConfig(precision=32),
    )


EXACT_CONFIG = MinhashConfig(num_buckets=1, hashes_per_bucket=EXACT_WORDS, hash_config=HashConfig(precision=32))


def make_document(text: str, *, language: str, source: str, path: str, license: str | None) -> Document:
    meta = {"language": language, "source": source, "path": path, "license": license or ""}
    return Document(text=text, id=f"{source}/{path}", metadata=meta)


# ---------------------------------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------------------------------


def _row_adapter(reader, data: dict, path: str, id_in_file, *, spec: dict) -> dict:
    """A `datasets`/jsonl/parquet row as a corpus Document (datatrove reader adapter)."""
    text = data.get(spec["text_column"])
    row_path = ""
    for name in ("path", "max_stars_repo_path", "file_path", "filename"):
        if data.get(name):
            row_path = str(data[name])
            break
    language = spec["language"] or data.get("language") or data.get("lang") or language_of(row_path) or "unknown"
    license = spec["license"] or data.get("license") or data.get("licenses") or data.get("max_stars_repo_licenses")
    if isinstance(license, list):
        license = ", ".join(map(str, license))
    label = spec["label"]
    # datatrove readers drop rows without text silently: carry them as a blank the quality filter counts
    return {
        "text": text if isinstance(text, str) and text else " ",
        "id": f"{label}/{row_path or id_in_file}",
        "metadata": {
            "empty": "missing_text" if not isinstance(text, str) else ("" if text else "empty"),
            "language": str(language).lower(),
            "source": label,
            "path": row_path,
            "license": str(license) if license else "",
        },
    }


class SourcesReader(PipelineStep):
    """All sources of a build, each split over the tasks: folder files round-robin, data files and `datasets`
    shards through datatrove's readers (JsonlReader, ParquetReader, HuggingFaceDatasetReader)."""

    type = "📖 - READER"
    name = "📂 corpus sources"

    def __init__(self, sources: list[dict], filters: FilterConfig):
        super().__init__()
        self.sources = sources
        self.filters = filters

    def skip(self, reason: str, count: int = 1) -> None:
        if count:
            self.stat_update(f"skipped_{reason}", value=count)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if data:
            yield from data
        for raw in self.sources:
            spec = SourceSpec(**raw)
            if spec.is_folder:
                yield from self._folder(spec, rank, world_size)
            else:
                yield from self._rows(spec, rank, world_size)

    def _folder(self, spec: SourceSpec, rank: int, world_size: int):
        root = Path(spec.path)
        if not root.is_dir():
            raise FileNotFoundError(f"source folder {root} does not exist (or was removed during the build)")
        listing = SkipCounter()
        files = list_files(root, listing)
        candidates = [(rel, language_of(rel)) for rel in files]
        if rank == 0:  # every task lists the folder; one counts what the listing skipped
            for reason, count in listing.items():
                self.skip(reason, count)
            self.skip("other_extension", sum(language is None for _, language in candidates))
            wanted = [lang for _, lang in candidates if lang is not None]
            if spec.languages:
                self.skip("other_language", sum(lang not in spec.languages for lang in wanted))
            if not any(lang is not None and (not spec.languages or lang in spec.languages) for _, lang in candidates):
                self.skip("empty_source")
        license = spec.license or folder_license(root)
        label = spec.display()
        mine = [
            (rel, lang)
            for rel, lang in candidates
            if lang is not None and (not spec.languages or lang in spec.languages)
        ][rank::world_size]
        for rel, language in mine:
            counts = SkipCounter()
            with self.track_time():
                text = read_document(root, rel, language, self.filters, counts, content_rules=False)
            for reason, count in counts.items():
                self.skip(reason, count)
            if text is not None:
                self.stat_update("documents")
                yield make_document(text, language=language, source=label, path=rel, license=license)

    def _rows(self, spec: SourceSpec, rank: int, world_size: int):
        from datatrove.pipeline.readers import HuggingFaceDatasetReader, JsonlReader

        from codellama_hf.corpus.sources import corpus_output_files

        adapter = partial(_row_adapter, spec={**spec.__dict__, "label": spec.display()})
        check_exists(spec)
        path = Path(spec.path) if spec.path else None
        if path is not None and is_glob(spec.path):
            kind = {".jsonl": JsonlReader, ".parquet": ParquetReader}.get(path.suffix.lower())
            if kind is None:
                raise ValueError(f"source {path}: shard globs must name .jsonl or .parquet files")
            reader = kind(str(path.parent), glob_pattern=path.name, adapter=adapter, recursive=False)
        elif path is not None and (files := corpus_output_files(path, spec.split)) is not None:
            reader = ParquetReader(str(path / spec.split), adapter=adapter, glob_pattern="*.parquet")
            if not files:
                self.skip("empty_source") if rank == 0 else None
                return
        elif path is not None and path.is_dir():
            split_dir = path / spec.split if (path / "dataset_dict.json").exists() else path
            if not any((split_dir / m).exists() for m in SAVED_DATASET_MARKERS):
                raise ValueError(f"saved dataset {path} has no split {spec.split!r}")
            reader = HuggingFaceDatasetReader(str(split_dir), load_from_disk=True, adapter=adapter)
        elif path is not None:
            suffix = path.suffix.lower()
            if suffix == ".jsonl":
                reader = JsonlReader(str(path.parent), glob_pattern=path.name, adapter=adapter, recursive=False)
            elif suffix == ".parquet":
                reader = ParquetReader(str(path.parent), glob_pattern=path.name, adapter=adapter, recursive=False)
            elif suffix in DATA_FILE_BUILDERS:
                options = {"data_files": str(path), "split": "train"}
                reader = HuggingFaceDatasetReader(DATA_FILE_BUILDERS[suffix], options, adapter=adapter)
            else:
                raise ValueError(
                    f"source {path}: unknown data file type {suffix!r}; use one of {sorted(DATA_FILE_BUILDERS)}, "
                    "or a folder of code files"
                )
        else:
            options = {"name": spec.name, "split": spec.split, "revision": spec.revision}
            reader = HuggingFaceDatasetReader(spec.dataset, options, streaming=True, adapter=adapter)
        kept = 0
        for document in reader.run(None, rank, world_size):
            if spec.languages and document.metadata["language"] not in spec.languages:
                self.skip("other_language")
                continue
            kept += 1
            self.stat_update("documents")
            yield document
        if not kept and rank == 0:
            self.skip("empty_source")


class ShardReader(ParquetReader):
    """Reads back the one filtered shard its task wrote in stage 1, so document indices line up with the
    signatures (datatrove's ParquetReader would deal files round-robin and shift them when a task wrote none)."""

    name = "📒 filtered shard"

    def __init__(self, folder: str):
        super().__init__(folder)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if data:
            yield from data
        name = f"{rank:05d}.parquet"
        if self.data_folder.isfile(name):
            for document in self.read_file(name):
                self.stat_update("documents")
                yield document


def flat_row(writer, document: Document) -> dict:
    """Writer adapter: the corpus columns (all strings), as the streaming data path and `read_sources` read them."""
    meta = document.metadata
    return {"text": document.text, **{name: str(meta.get(name) or "") for name in FIELDS}}


# ---------------------------------------------------------------------------------------------------------------
# Filters
# ---------------------------------------------------------------------------------------------------------------


class QualityFilter(BaseFilter):
    """The project's content rules (filters.FilterConfig): size, minified, generated, long lines, alphanumeric
    share, vendored/generated paths; the dropped reason is the rule's name."""

    name = "🧹 code quality"

    def __init__(self, filters: FilterConfig):
        super().__init__()
        self.filters = filters

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        meta = doc.metadata
        empty = meta.pop("empty", "")  # a row without text (see _row_adapter)
        if empty == "missing_text":
            return False, "missing_text"
        text = "" if empty else doc.text
        reason = self.filters.check_text(text, meta["language"], meta.get("path") or "")
        if reason is None and not text:
            reason = "missing_text"
        return (False, reason) if reason else True


class LanguageFilter(BaseFilter):
    """Keeps the languages asked for (the language comes from the file extension or the row)."""

    name = "🔤 language"

    def __init__(self, languages: list[str]):
        super().__init__()
        self.languages = frozenset(languages)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return True if doc.metadata["language"] in self.languages else (False, "other_language")


class LicenseFilter(BaseFilter):
    """Keeps documents whose licence (SPDX id detected from the repository's LICENSE file, or the row's) is
    allowed; documents of unknown licence are dropped as `unknown_license`."""

    name = "⚖️ licence"

    def __init__(self, licenses: list[str]):
        super().__init__()
        self.licenses = frozenset(licenses)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        license = doc.metadata.get("license") or ""
        if not license:
            return False, "unknown_license"
        allowed = any(part.strip() in self.licenses for part in license.split(","))
        return True if allowed else (False, "license")


# ---------------------------------------------------------------------------------------------------------------
# Stage 1: signatures (pass-through)
# ---------------------------------------------------------------------------------------------------------------


class Signatures(PipelineStep):
    """Stage 1 of exact + near dedup, as a pass-through step (see module docstring)."""

    type = "🫂 - DEDUP"
    name = "🎯 code MinHash signatures"

    def __init__(self, folder: str, config: DedupConfig):
        super().__init__()
        self.folder = folder
        self.config = config

    def _sorter(self, kind: str, minhash_config: MinhashConfig) -> MinhashDedupSignature:
        # datatrove's own signature step sorts and verifies the bucket files it finds complete on disk.
        return MinhashDedupSignature(
            f"{self.folder}/{kind}", minhash_config, language=CodeWordTokenizer(), skip_existing_sigs=True
        )

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        folder = get_datafolder(self.folder)
        near = near_config(self.config)
        rows = near.hashes_per_bucket
        near_fmt = struct.Struct(f"<{rows}II")
        exact_fmt = struct.Struct(f"<{EXACT_WORDS}II")
        buckets = [folder.open(f"near/bucket_{b:03d}/{rank:05d}.minhash.sig", "wb") for b in range(near.num_buckets)]
        exact = folder.open(f"exact/bucket_000/{rank:05d}.minhash.sig", "wb")
        full = folder.open(f"full/{rank:05d}.u32", "wb")
        keys = folder.open(f"keys/{rank:05d}.u64", "wb")
        count = 0
        try:
            for index, doc in enumerate(data):
                with self.track_time():
                    signature = minhash(doc.text, self.config)
                    for b, handle in enumerate(buckets):
                        handle.write(near_fmt.pack(*signature[b * rows : (b + 1) * rows].tolist(), index))
                    exact.write(exact_fmt.pack(*exact_digest(doc.text).tolist(), index))
                    full.write(signature.tobytes())
                    meta = doc.metadata
                    key = document_key(meta.get("source", ""), meta.get("path", ""), doc.text)
                    keys.write(np.uint64(key).tobytes())
                    self.stat_update("documents")
                count = index + 1
                yield doc
        finally:
            for handle in (*buckets, exact, full, keys):
                handle.close()
        with self.track_time():
            if count:
                self._sorter("near", near).run(iter(()), rank, world_size)
                self._sorter("exact", EXACT_CONFIG).run(iter(()), rank, world_size)


# ---------------------------------------------------------------------------------------------------------------
# Stage 3: clusters
# ---------------------------------------------------------------------------------------------------------------


class _UnionFind:
    """Union-find over the (file, doc) nodes that appear in pairs; the root is the smallest (key, file, doc)."""

    def __init__(self, key_of):
        self.parent: dict[tuple[int, int], tuple[int, int]] = {}
        self.key_of = key_of

    def find(self, x):
        path = []
        while self.parent.get(x, x) != x:
            path.append(x)
            x = self.parent[x]
        for node in path:
            self.parent[node] = x
        return x

    def union(self, a, b) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if (self.key_of(rb), rb) < (self.key_of(ra), ra):
            ra, rb = rb, ra
        self.parent.setdefault(ra, ra)
        self.parent[rb] = ra

    def removed(self) -> set:
        return {node for node in self.parent if self.find(node) != node}


class DuplicateClusters(PipelineStep):
    """Stage 3: exact and near clusters from datatrove's duplicate pairs, one `.remove` file per stage-1 task."""

    type = "🫂 - DEDUP"
    name = "🎯 duplicate clusters"

    def __init__(self, folder: str, config: DedupConfig, tasks: int):
        super().__init__()
        self.folder = folder
        self.config = config
        self.tasks = tasks

    def _pairs(self, kind: str):
        folder = get_datafolder(f"{self.folder}/dups/{kind}")
        for name in sorted(folder.list_files(glob_pattern="*.dups")):
            with folder.open(name, "rb") as handle:
                yield from read_tuples_from_file(handle, "4I", lines_to_buffer=1000)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if world_size != 1:
            raise ValueError(f"the cluster stage runs as one task, got {world_size}")
        root = Path(self.folder)
        maps: dict[tuple[str, int], np.ndarray] = {}

        def table(kind: str, file: int) -> np.ndarray:
            if (kind, file) not in maps:
                path = root / kind / f"{file:05d}.{'u64' if kind == 'keys' else 'u32'}"
                dtype = np.uint64 if kind == "keys" else np.uint32
                array = np.memmap(path, dtype=dtype, mode="r") if path.stat().st_size else np.zeros(0, dtype)
                maps[kind, file] = array.reshape(-1, self.config.num_perm) if kind == "full" else array
            return maps[kind, file]

        def key_of(node) -> int:
            return int(table("keys", node[0])[node[1]])

        with self.track_time():
            exact = _UnionFind(key_of)
            if self.config.exact:
                for f1, d1, f2, d2 in self._pairs("exact"):
                    exact.union((f1, d1), (f2, d2))
            near = _UnionFind(key_of)
            if self.config.near:
                for f1, d1, f2, d2 in self._pairs("near"):
                    a, b = table("full", f1)[d1], table("full", f2)[d2]
                    if np.count_nonzero(a == b) >= self.config.threshold * self.config.num_perm:
                        near.union((f1, d1), (f2, d2))
                    else:
                        self.stat_update("near_candidates_below_threshold")
            exact_removed = exact.removed()
            near_removed = near.removed() - exact_removed
            # near clusters beyond the exact copies: an exact copy is a near-duplicate too, but counted as exact
            sizes = Counter(near.find(node) for node in near.parent if node not in exact_removed)
            stats = {
                "exact_removed": len(exact_removed),
                "near_removed": len(near_removed),
                "near_clusters": sum(size > 1 for size in sizes.values()),
                "largest_cluster": max(sizes.values(), default=1),
            }
            by_file: dict[int, list[int]] = {file: [] for file in range(self.tasks)}
            for file, doc in exact_removed | near_removed:
                by_file[file].append(doc)
            out = get_datafolder(f"{self.folder}/remove")
            for file, docs in by_file.items():
                with out.open(f"{file:06d}.remove", "wb") as handle:
                    handle.write(np.asarray(sorted(docs), dtype="<u4").tobytes())
            with out.open("dedup_stats.json", "w") as handle:
                json.dump(stats, handle)
            for name, value in stats.items():
                self.stat_update(name, value=value)
        return iter(())


# ---------------------------------------------------------------------------------------------------------------
# Stage 4: split and per-language counts
# ---------------------------------------------------------------------------------------------------------------


class SplitAndCount(PipelineStep):
    """Tags each document with its split (the held-out rule of embedded.is_validation: by file) and counts
    documents, bytes and (with a tokenizer) tokens per language."""

    type = "📊 - STATS"
    name = "🗂️ split + language counts"

    def __init__(self, seed: int, fraction: float, tokenizer: str | None = None):
        super().__init__()
        self.seed = seed
        self.fraction = fraction
        self.tokenizer = tokenizer

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        from codellama_hf.corpus.embedded import is_validation

        tokenizer = None
        if self.tokenizer:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(self.tokenizer)
        for doc in data:
            with self.track_time():
                meta = doc.metadata
                held = self.fraction > 0 and is_validation(self.seed, meta["source"], meta["path"], self.fraction)
                meta["split"] = "validation" if held else "train"
                language = meta["language"]
                self.stat_update(f"documents/{language}", f"documents/{meta['split']}")
                self.stat_update(f"bytes/{language}", value=len(doc.text.encode("utf-8", "surrogatepass")))
                if tokenizer is not None:
                    ids = tokenizer(doc.text, add_special_tokens=False)["input_ids"]
                    self.stat_update(f"tokens/{language}", value=len(ids))
            yield doc
