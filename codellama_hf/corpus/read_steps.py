"""The corpus builder's datatrove steps that read, filter and tag documents (deduplication: dedup_steps.py).

Documents travel as datatrove `Document`s whose metadata holds the corpus columns (language, source, path, license).
Every document that is not kept is counted in the step's stats under the reason: `skipped_<reason>` for what a
reader could not turn into a document (unreadable, binary, non-UTF-8, other extension, ...), `dropped_<reason>` for
what a filter step removed.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.readers import ParquetReader

from codellama_hf.corpus.files import folder_license, language_of, list_files, read_document
from codellama_hf.corpus.filters import FilterConfig, SkipCounter
from codellama_hf.corpus.source_spec import (
    DATA_FILE_BUILDERS,
    SAVED_DATASET_MARKERS,
    SourceSpec,
    check_exists,
    corpus_output_files,
    is_glob,
)

FIELDS = ("language", "source", "path", "license")


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
# Stage 4: split and per-language counts
# ---------------------------------------------------------------------------------------------------------------


class SplitAndCount(PipelineStep):
    """Tags each document with its split (the held-out rule of embedded.is_validation: by file, by row where a
    document has no path) and counts documents, bytes and (with a tokenizer) tokens per language."""

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
                held = self.fraction > 0 and is_validation(
                    self.seed, meta["source"], meta["path"], self.fraction, text=doc.text
                )
                meta["split"] = "validation" if held else "train"
                language = meta["language"]
                self.stat_update(f"documents/{language}", f"documents/{meta['split']}")
                self.stat_update(f"bytes/{language}", value=len(doc.text.encode("utf-8", "surrogatepass")))
                if tokenizer is not None:
                    ids = tokenizer(doc.text, add_special_tokens=False)["input_ids"]
                    self.stat_update(f"tokens/{language}", value=len(ids))
            yield doc
