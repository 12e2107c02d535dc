"""Where documents come from: local folders, git checkouts (local or cloned) and `datasets` names, paths or files,
read into one dataset with the same columns.

The spec of a source is source_spec.SourceSpec; folders and git checkouts are read by files.py, everything else by
dataset_sources.py.
"""

from __future__ import annotations

import os

from codellama_hf.corpus.dataset_sources import read_dataset
from codellama_hf.corpus.files import read_folder
from codellama_hf.corpus.filters import FilterConfig, SkipCounter
from codellama_hf.corpus.source_spec import SourceSpec


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
            part = read_folder(spec, filters, stats, stream)
        else:
            part = read_dataset(spec, filters, stats, stream, num_proc)
        parts.append(part)
    if any(isinstance(p, datasets.IterableDataset) for p in parts):
        parts = [p.to_iterable_dataset() if isinstance(p, datasets.Dataset) else p for p in parts]
        return datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    total = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    if len(total) == 0:
        names = ", ".join(s.display() for s in specs)
        raise ValueError(f"no documents kept from {names}; skipped: {dict(stats.table_rows()) or 'nothing found'}")
    return total
