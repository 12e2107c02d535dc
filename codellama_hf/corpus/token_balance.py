"""Balance "tokens" of a mixture: count every document's tokens, then schedule documents so that each component's
share of the tokens follows its weight.

Table 1 of the paper (§2.2) gives shares of the training *tokens*, so the default balance of a mixture
(mixture.py) counts them: every document is tokenized (Llama 2's tokenizer unless one is given; Code Llama adds
only the infilling pieces) and the next document comes from the component furthest behind its share,
argmin_i(tokens_i / w_i), over each component's seeded shuffle (`token_schedule`). Every prefix of the mixture then
has each component's token share within one document of w_i, and the result carries a `tokens` column, so
`token_shares` reports the realised shares (the training lineage records them).

The counts are made by `num_proc` processes (`datasets.map`, every core by default) and cached as a column beside
each component's files (`count_tokens`); the schedule is kept as an indices file in the `datasets` cache
(`mixture_cache_dir`), so a second call with the same inputs only memory-maps (`codellama-hf data prepare` makes it
before a launch). A module of its own because it is the expensive part at scale: hours at 500B tokens.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

# a mixture's columns (and `tokens` with balance "tokens"), in the order they are added: no cast rewrites the table
COLUMNS = ["text", "source", "path", "component"]


def counting_tokenizer(tokenizer):
    """The tokenizer that counts: the one given (or its folder), else Llama 2's, whose vocabulary Code Llama keeps."""
    from transformers import AutoTokenizer

    if tokenizer is None:
        from codellama_hf.assets import llama2_tokenizer_dir

        try:
            tokenizer = llama2_tokenizer_dir()
        except Exception as err:
            raise RuntimeError(
                f"balance 'tokens' counts tokens with Llama 2's tokenizer, which could not be fetched ({err}); pass "
                "tokenizer= (a tokenizer or its folder), or balance 'bytes'"
            ) from err
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))
    return tokenizer


def tokenizer_identity(tokenizer) -> str:
    """A short hash of what the tokenizer does (its Rust definition), naming the token counts it gives."""
    import hashlib

    backend = getattr(tokenizer, "backend_tokenizer", None)
    identity = backend.to_str() if backend is not None else f"{tokenizer.name_or_path}:{len(tokenizer)}"
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def _count_tokens(texts: list[str], tokenizer) -> list[int]:
    """Tokens per text (at least 1). The Rust tokenizer's own encodings when there is one: the same lengths as
    `tokenizer(texts)["input_ids"]` without building Python lists of ids (about 1.6x faster here)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return [max(1, len(encoding)) for encoding in backend.encode_batch(texts, add_special_tokens=False)]
    return [max(1, len(ids)) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _token_column(batch: dict, tokenizer=None, definition: str | None = None) -> dict:
    return {"tokens": _count_tokens(batch["text"], tokenizer or _rust_tokenizer(definition))}


@functools.lru_cache(maxsize=2)
def _rust_tokenizer(definition: str):
    """A Rust tokenizer from its JSON definition, built once per worker process: sent as text, a job's arguments
    pickle in milliseconds (a transformers tokenizer object takes ~0.25 s per worker to pickle here)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(definition)
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return _Backend(tokenizer)


@dataclass(frozen=True)
class _Backend:
    backend_tokenizer: object  # what _count_tokens reads


def default_num_proc() -> int:
    """The cores this process may use (its CPU affinity, which a scheduler such as Slurm sets)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _counter_arguments(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return {"definition": backend.to_str()} if backend is not None else {"tokenizer": tokenizer}


DOCUMENTS_PER_PROCESS = 2000  # fewer, and a counting process costs more to start (about 1.3 s here) than it saves


def count_tokens(dataset, tokenizer, num_proc: int | None = None, announce=None):
    """`dataset` with a `tokens` column, counted by `num_proc` processes (default: every core) with the Rust
    tokenizer. The counts are a column of their own, cached by `datasets` beside the dataset's files under a
    fingerprint of the dataset and the tokenizer (a relaunch reads them back), and joined to the documents without
    copying them. `announce(message)` is called before counting that is not cached."""
    import hashlib

    import datasets

    key = f"{dataset._fingerprint}:{tokenizer_identity(tokenizer)}:tokens-v1"
    fingerprint = hashlib.sha256(key.encode()).hexdigest()[:32]
    done = []
    if dataset.cache_files and datasets.is_caching_enabled():
        done = sorted(Path(dataset.cache_files[0]["filename"]).parent.glob(f"cache-{fingerprint}*.arrow"))
    if done:  # read back as written: datasets looks for the shard files of the same number of processes
        num_proc = len(done) if len(done) > 1 else None
    else:
        num_proc = min(num_proc or default_num_proc(), len(dataset) // DOCUMENTS_PER_PROCESS)
        num_proc = num_proc if num_proc > 1 else None
        if announce is not None:
            announce(f"counting the tokens of {len(dataset):,} documents with {num_proc or 1} processes")
    counts = dataset.select_columns(["text"]).map(
        _token_column,
        batched=True,
        batch_size=1000,
        num_proc=num_proc,
        fn_kwargs=_counter_arguments(tokenizer),
        remove_columns=["text"],
        new_fingerprint=fingerprint,
        desc="counting tokens",
    )
    return datasets.concatenate_datasets([dataset, counts], axis=1)


def token_schedule(lengths: list, weights: list[float], stopping_strategy: str, seed: int):
    """Yield (component, document index): the component furthest behind its token share goes next.

    `lengths[i]` holds the token counts of component i's documents, served in a seeded order that is reshuffled on
    every pass. "all_exhausted" repeats a finished component until every one has been used whole;
    "first_exhausted" stops when the first runs out; "all_exhausted_without_replacement" drops finished ones.
    """
    import numpy as np

    served = [0] * len(lengths)
    passes = [0] * len(lengths)
    position = [0] * len(lengths)
    orders = [np.random.default_rng([seed, i, 0]).permutation(len(n)) for i, n in enumerate(lengths)]
    active = [i for i, n in enumerate(lengths) if len(n)]
    while active:
        i = min(active, key=lambda c: (served[c] / weights[c], c))
        index = int(orders[i][position[i]])
        yield i, index
        served[i] += int(lengths[i][index])
        position[i] += 1
        if position[i] == len(orders[i]):
            passes[i] += 1
            if stopping_strategy == "first_exhausted":
                return
            if stopping_strategy == "all_exhausted_without_replacement":
                active.remove(i)
            elif all(passes[c] for c in range(len(lengths)) if len(lengths[c])):
                return
            position[i] = 0
            orders[i] = np.random.default_rng([seed, i, passes[i]]).permutation(len(orders[i]))


def mixture_cache_dir() -> Path:
    """Where token-balanced mixture tables are kept: the `datasets` cache (HF_DATASETS_CACHE), so that a cache on
    a shared filesystem serves every node."""
    import datasets

    return Path(datasets.config.HF_DATASETS_CACHE) / "codellama_hf" / "mixtures"


def token_mixture(parts: list, weights: list[float], stopping_strategy: str, seed: int, tokenizer, announce=None):
    """`parts` (with `tokens` columns) in `token_schedule` order: an indices file over their concatenation, kept in
    `mixture_cache_dir`, or a generator when a part streams."""
    import hashlib
    import json

    import datasets
    import numpy as np

    if any(isinstance(p, datasets.IterableDataset) for p in parts):
        parts = [p.to_iterable_dataset() if isinstance(p, datasets.Dataset) else p for p in parts]
        return datasets.IterableDataset.from_generator(
            _stream_by_tokens,
            features=datasets.Features(
                {**{name: datasets.Value("string") for name in COLUMNS}, "tokens": datasets.Value("int64")}
            ),
            gen_kwargs={
                "parts": tuple(parts),  # a list would be split into shards by datasets
                "weights": tuple(weights),
                "stopping_strategy": stopping_strategy,
                "tokenizer": tokenizer,
            },
        )
    # The schedule is kept as an indices file (8 bytes a row; the documents stay where they are) under a fingerprint
    # of its inputs: each part's datasets fingerprint (which follows its source files and counts) and the settings.
    inputs = [[p._fingerprint for p in parts], weights, stopping_strategy, seed, 1]
    key = hashlib.sha256(json.dumps(inputs).encode()).hexdigest()[:32]
    folder = mixture_cache_dir() / key
    documents = datasets.concatenate_datasets(parts)
    if (folder / INDICES).is_file():
        return _with_indices(documents, folder / INDICES, key)
    if announce is not None:
        announce(f"scheduling {len(documents):,} documents by their token counts")
    lengths = [np.asarray(p.with_format("numpy")["tokens"]) for p in parts]
    offsets = np.cumsum([0] + [len(p) for p in parts[:-1]])
    from datasets.utils import tqdm  # datasets' bars: shown or hidden with theirs

    schedule = tqdm(token_schedule(lengths, weights, stopping_strategy, seed), desc="scheduling", unit=" rows")
    order = np.fromiter((offsets[i] + index for i, index in schedule), dtype=np.int64)
    schedule.close()
    if not (datasets.is_caching_enabled() and all(p.cache_files for p in parts)):
        return documents.select(order)  # in-memory parts: nothing that a later call could find again
    from codellama_hf.io import atomic_dir

    with atomic_dir(folder, shared=True) as tmp:  # complete or absent; two nodes writing at once keep one copy
        _write_indices(documents, order, tmp / INDICES)
        (tmp / "mixture.json").write_text(json.dumps({"inputs": inputs, "rows": len(order)}, indent=1))
    return _with_indices(documents, folder / INDICES, key)


INDICES = "indices.arrow"


def _write_indices(documents, order, path: Path) -> None:
    """Rows `order` of `documents` as rows of its underlying table (the parts' shuffles composed in), in the Arrow
    stream format datasets memory-maps its own indices from (what `Dataset.select` writes to a cache file)."""
    import pyarrow as pa

    rows = pa.array(order, type=pa.uint64())
    if documents._indices is not None:  # concatenated shuffled parts: their own row mapping
        rows = documents._indices.column(0).take(rows)
    table = pa.table({"indices": rows})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=1 << 20)


def _with_indices(documents, path: Path, fingerprint: str):
    """`documents` read in the order of a memory-mapped indices file."""
    import datasets
    from datasets.table import MemoryMappedTable

    return datasets.Dataset(
        documents.data,
        info=documents.info,
        split=documents.split,
        indices_table=MemoryMappedTable.from_file(str(path)),
        fingerprint=fingerprint,
    )


def _stream_by_tokens(parts, weights, stopping_strategy, tokenizer):
    """The streaming form of `token_schedule`: documents are tokenized as they are read (each component's stream
    restarts, with the next shuffle epoch, when it runs out)."""
    served = [0] * len(parts)
    passes = [0] * len(parts)
    streams = [iter(p) for p in parts]
    active = list(range(len(parts)))
    while active:
        i = min(active, key=lambda c: (served[c] / weights[c], c))
        row = next(streams[i], None)
        if row is None:
            passes[i] += 1
            if stopping_strategy == "first_exhausted" or (stopping_strategy == "all_exhausted" and all(passes)):
                return
            if stopping_strategy == "all_exhausted_without_replacement":
                active.remove(i)
                continue
            parts[i].set_epoch(passes[i])
            streams[i] = iter(parts[i])
            row = next(streams[i], None)
            if row is None:  # an empty component
                active.remove(i)
                continue
        tokens = _count_tokens([row["text"]], tokenizer)[0]
        served[i] += tokens
        yield {**{name: row[name] for name in COLUMNS}, "tokens": tokens}


def token_shares(mixed, rows: int | None = None) -> dict[str, float]:
    """Each component's share of the tokens in the first `rows` rows of a mixture made with balance "tokens"."""
    from collections import Counter

    totals: Counter = Counter()
    if hasattr(mixed, "select") and hasattr(mixed, "__len__"):
        data = mixed.select(range(min(rows, len(mixed)))) if rows is not None else mixed
        for batch in data.select_columns(["component", "tokens"]).iter(batch_size=10_000):
            for component, tokens in zip(batch["component"], batch["tokens"], strict=True):
                totals[component] += tokens
    else:
        for row in mixed.take(rows) if rows is not None else mixed:
            totals[row["component"]] += row["tokens"]
    total = sum(totals.values())
    return {name: count / total for name, count in sorted(totals.items())}
