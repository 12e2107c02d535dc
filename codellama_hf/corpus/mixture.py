"""Training mixtures: Table 1's sampling proportions as presets, user mixtures in YAML, sampled by interleaving.

Presets (paper §2.2, Table 1):
- "code": code 85%, natural language about code 8%, natural language 7% (Code Llama, 500B tokens);
- "python": Python 75%, code 10%, natural language about code 10%, natural language 5% (Code Llama - Python);
- "instruct_rehearsal": code 6% and natural language 2% of the instruct stage; the other 92% is `reserved` for the
  instruct data, which the caller passes as `extra` (or mixes itself with `Mixture.weights`).

Table 1 gives shares of the training tokens; the `balance` setting says what the weights are shares of:
- "tokens" (default): every document is tokenized (Llama 2's tokenizer unless one is given; Code Llama adds only
  the infilling pieces) and the next document comes from the component furthest behind its share,
  argmin_i(tokens_i / w_i), over each component's seeded shuffle (`token_schedule`). Every prefix of the mixture then
  has each component's token share within one document of w_i, and the result carries a `tokens` column, so
  `token_shares` reports the realised shares (the training lineage records them). The counts are made by
  `num_proc` processes (`datasets.map`, every core by default) and cached as a column beside each component's
  files; the schedule is kept as an indices file in the `datasets` cache (`mixture_cache_dir`), so a second call
  with the same inputs only memory-maps (`codellama-hf data prepare` makes it before a launch);
- "documents": each document is drawn from component i with probability w_i (`datasets.interleave_datasets`);
- "bytes": with probability proportional to w_i / (mean document size of i), a proxy for tokens without a
  tokenizer. Sizes are measured on up to 2,000 documents per component.

Stop strategy: "all_exhausted" by default. A component that runs out starts over (reshuffled) while the others
continue, so the proportions hold for as long as you read, as in Table 1 where code is seen 2.03 epochs and
natural language 0.01; the mixture ends once every component has been used whole at least once, and training
normally stops earlier, at max_steps. "first_exhausted" never repeats a document but ends when the first
component runs out; set `stopping_strategy` in the YAML to choose it.

YAML format::

    preset: code                # optional: start from a preset's weights
    stopping_strategy: all_exhausted
    components:
      code:
        weight: 0.85
        sources: [~/src/my-repo, {dataset: bigcode/the-stack-smol, text_column: content}]
        languages: [python, c]  # optional: keep only these languages
      nl_code: 0.08             # shorthand for {weight: 0.08}; no sources: the embedded "nl_code" corpus
      nl: 0.07
    balance: tokens             # default; or documents, bytes

Weights must be positive and, with `reserved`, sum to 1 (within 1e-6).

Every row keeps the `source` and `path` it was read with (codellama_hf.corpus's columns; "" for `extra` rows that
lack them), so the data path can still group a mixture's files by repository (data/repository.py).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

from codellama_hf.corpus.embedded import KINDS, embedded_corpus, is_validation
from codellama_hf.corpus.sources import read_sources
from codellama_hf.io import read_yaml_mapping

STOPPING_STRATEGIES = ("all_exhausted", "first_exhausted", "all_exhausted_without_replacement")
BALANCES = ("tokens", "documents", "bytes")
SIZE_SAMPLE = 2000
TOLERANCE = 1e-6
KEPT = ["text", "source", "path"]  # columns a component keeps; `component` is added
# a mixture's columns (and `tokens` with balance "tokens"), in the order they are added: no cast rewrites the table
COLUMNS = ["text", "source", "path", "component"]


@dataclass(frozen=True)
class Component:
    name: str
    weight: float
    sources: tuple | None = None  # None: the embedded corpus of that name
    languages: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Mixture:
    name: str
    components: tuple[Component, ...]
    reserved: float = 0.0  # probability left for data the caller adds (the instruct data)
    stopping_strategy: str = "all_exhausted"
    balance: str = "tokens"

    def __post_init__(self):
        where = f"mixture {self.name!r}"
        if not self.components:
            raise ValueError(f"{where} has no components")
        names = [c.name for c in self.components]
        if len(set(names)) != len(names):
            raise ValueError(f"{where} names a component twice: {names}")
        for c in self.components:
            if not isinstance(c.weight, (int, float)) or not math.isfinite(c.weight) or c.weight <= 0:
                raise ValueError(f"{where}: component {c.name!r} has weight {c.weight!r}; weights must be > 0")
        if not 0 <= self.reserved < 1:
            raise ValueError(f"{where}: reserved share must be in [0, 1), got {self.reserved!r}")
        total = sum(c.weight for c in self.components) + self.reserved
        if abs(total - 1) > TOLERANCE:
            shares = ", ".join(f"{c.name}={c.weight:g}" for c in self.components)
            extra = f" + reserved {self.reserved:g}" if self.reserved else ""
            raise ValueError(f"{where}: weights {shares}{extra} sum to {total:g}, not 1; fix them so they sum to 1")
        if self.stopping_strategy not in STOPPING_STRATEGIES:
            raise ValueError(
                f"{where}: stopping_strategy {self.stopping_strategy!r} is not one of {STOPPING_STRATEGIES}"
            )

        if self.balance not in BALANCES:
            raise ValueError(f"{where}: balance {self.balance!r} is not one of {BALANCES}")

    @property
    def weights(self) -> dict[str, float]:
        return {c.name: c.weight for c in self.components}


PRESETS = {
    "code": Mixture("code", (Component("code", 0.85), Component("nl_code", 0.08), Component("nl", 0.07))),
    "python": Mixture(
        "python",
        (Component("python", 0.75), Component("code", 0.10), Component("nl_code", 0.10), Component("nl", 0.05)),
    ),
    "instruct_rehearsal": Mixture(
        "instruct_rehearsal", (Component("code", 0.06), Component("nl", 0.02)), reserved=0.92
    ),
}


def _component(name: str, value, base: Component | None) -> Component:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = {"weight": value}
    if not isinstance(value, dict):
        raise ValueError(f"mixture component {name!r} must be a weight or a mapping, got {value!r}")
    unknown = set(value) - {"weight", "sources", "languages"}
    if unknown:
        raise ValueError(f"mixture component {name!r} has unknown field(s) {sorted(unknown)}")
    weight = value.get("weight", base.weight if base else None)
    if weight is None:
        raise ValueError(f"mixture component {name!r} needs a weight")
    sources = value.get("sources", base.sources if base else None)
    if isinstance(sources, (str, dict)):
        sources = [sources]
    languages = value.get("languages")
    return Component(
        name,
        weight,
        tuple(sources) if sources is not None else None,
        tuple(languages) if languages else (base.languages if base else None),
    )


def mixture_from_dict(data: dict, name: str = "custom") -> Mixture:
    if not isinstance(data, dict):
        raise ValueError(f"mixture {name!r} must be a mapping with 'components', got {type(data).__name__}")
    unknown = set(data) - {"name", "preset", "components", "reserved", "stopping_strategy", "balance"}
    if unknown:
        raise ValueError(f"mixture {name!r} has unknown field(s) {sorted(unknown)}")
    base = get_mixture(data["preset"]) if data.get("preset") else None
    given = data.get("components") or {}
    if not isinstance(given, dict):
        raise ValueError(f"mixture {name!r}: 'components' must map names to weights or mappings")
    components = {c.name: c for c in base.components} if base else {}
    for key, value in given.items():
        components[key] = _component(key, value, components.get(key))
    return Mixture(
        data.get("name", name),
        tuple(components.values()),
        reserved=data.get("reserved", base.reserved if base else 0.0),
        stopping_strategy=data.get("stopping_strategy", base.stopping_strategy if base else "all_exhausted"),
        balance=data.get("balance", base.balance if base else "tokens"),
    )


def get_mixture(preset_or_path: str | os.PathLike | Mixture) -> Mixture:
    """A preset by name, a YAML file, or a Mixture as is."""
    if isinstance(preset_or_path, Mixture):
        return preset_or_path
    key = os.fspath(preset_or_path)
    if key in PRESETS:
        return PRESETS[key]
    path = Path(key).expanduser()
    if path.suffix.lower() in (".yaml", ".yml") or path.exists():
        data = read_yaml_mapping(path, "mixture file")
        try:
            return mixture_from_dict(data, name=path.stem)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err
    raise ValueError(f"unknown mixture {key!r}: use a preset ({', '.join(PRESETS)}) or a YAML file")


def map_style(specs) -> list:
    """Source specs read into memory-mapped Arrow tables, not streamed: a `datasets` name streams by default, but a
    stage trains from a table, which a stream would fill in one process (`datasets.load_dataset` prepares it once,
    cached under its fingerprint). A spec that sets `streaming` keeps it."""
    from dataclasses import replace as with_field

    from codellama_hf.corpus.source_spec import SourceSpec

    specs = [specs] if isinstance(specs, (str, os.PathLike, dict, SourceSpec)) else list(specs)
    parsed = [SourceSpec.parse(s) for s in specs]
    return [with_field(s, streaming=False) if s.streaming is None else s for s in parsed]


def _component_dataset(
    component: Component,
    split: str,
    seed: int,
    corpus_seed: int,
    streaming: bool,
    max_documents: int | None,
    count=None,
    num_proc: int | None = None,
):
    import datasets

    if component.sources is None:
        if component.name not in KINDS:
            raise ValueError(
                f"mixture component {component.name!r} has no sources and is not an embedded corpus ({KINDS})"
            )
        ds = embedded_corpus(component.name, split, seed=corpus_seed)
    else:
        specs = list(component.sources) if streaming else map_style(component.sources)
        ds = read_sources(specs, streaming=streaming, num_proc=num_proc)
        # The same held-out rule as the embedded corpus: by file, from (corpus_seed, source, path).
        want = split == "validation"
        ds = ds.filter(lambda s, p: is_validation(corpus_seed, s, p) == want, input_columns=["source", "path"])
    if component.languages:
        allowed = set(component.languages)
        ds = ds.filter(lambda lang: lang in allowed, input_columns=["language"])
    if isinstance(ds, datasets.Dataset):
        if len(ds) == 0:
            raise ValueError(f"mixture component {component.name!r} has no documents in split {split!r}")
        ds = ds.select_columns(KEPT).add_column("component", [component.name] * len(ds))
        if max_documents is not None and len(ds) > max_documents:  # a sample: count only what is kept
            ds = ds.shuffle(seed=seed).select(range(max_documents))
            ds = count(ds.flatten_indices()) if count is not None else ds
        else:  # counted in file order, then joined without copying the text
            ds = (count(ds) if count is not None else ds).shuffle(seed=seed)
        return ds.to_iterable_dataset() if streaming else ds
    ds = ds.select_columns(KEPT).map(lambda _: {"component": component.name}).shuffle(seed=seed)
    return ds.take(max_documents) if max_documents is not None else ds


def load_mixture(
    preset_or_path,
    split: str = "train",
    *,
    seed: int = 0,
    streaming: bool = False,
    sources: dict | None = None,
    extra: dict | None = None,
    max_documents: int | None = None,
    corpus_seed: int = 0,
    balance: str | None = None,
    tokenizer=None,
    num_proc: int | None = None,
    announce=None,
):
    """Sample a mixture's components at its probabilities: a Dataset (or IterableDataset) of `text`, `component`,
    `source` and `path`.

    `sources` maps component names to source specs (overriding the YAML or the embedded default); `extra` maps names
    to datasets with a `text` column, or to (dataset, weight), that fill the mixture's `reserved` share (split evenly
    when no weights are given). `max_documents` caps each component before mixing. `seed` drives the sampling;
    `corpus_seed` picks the embedded corpus and the held-out files, so changing `seed` reuses the same corpus.
    `balance` ("tokens", "documents" or "bytes") overrides the mixture's; `tokenizer` (a tokenizer or a folder;
    default: Llama 2's) counts the tokens of "tokens", with `num_proc` processes (default: every core); the
    token-balanced table is kept in the `datasets` cache (`mixture_cache_dir`) and `announce(message)`, when given,
    is called before one is built.
    """
    import datasets

    mixture = get_mixture(preset_or_path)
    if balance is not None:
        mixture = replace(mixture, balance=balance)
    if sources:
        unknown = set(sources) - set(mixture.weights)
        if unknown:
            raise ValueError(f"sources name components {sorted(unknown)} that mixture {mixture.name!r} lacks")
        given = {
            name: [specs] if isinstance(specs, (str, dict, os.PathLike)) else specs for name, specs in sources.items()
        }
        mixture = replace(
            mixture,
            components=tuple(
                replace(c, sources=tuple(given[c.name])) if c.name in given else c for c in mixture.components
            ),
        )
    extra = extra or {}
    if mixture.reserved and not extra:
        raise ValueError(
            f"mixture {mixture.name!r} leaves {mixture.reserved:.0%} for your own data: pass extra={{'instruct': "
            f"dataset}}, or read get_mixture({mixture.name!r}).weights and mix it yourself"
        )
    if extra and not mixture.reserved:
        raise ValueError(f"mixture {mixture.name!r} reserves no share for extra datasets {sorted(extra)}")
    by_tokens = mixture.balance == "tokens" and len(mixture.components) + len(extra) > 1
    count = None
    if by_tokens and not streaming:
        tokenizer = _tokenizer(tokenizer)
        num_proc = num_proc or default_num_proc()

        def count(dataset):
            return count_tokens(dataset, tokenizer, num_proc, announce)

    parts = [
        _component_dataset(c, split, seed, corpus_seed, streaming, max_documents, count, num_proc)
        for c in mixture.components
    ]
    probabilities = [c.weight for c in mixture.components]
    for name, value in extra.items():
        data, weight = value if isinstance(value, tuple) else (value, mixture.reserved / len(extra))
        if "text" not in (data.column_names or []):
            raise ValueError(f"extra dataset {name!r} needs a 'text' column (has {data.column_names})")
        missing = [c for c in KEPT if c not in data.column_names]
        data = data.select_columns([c for c in KEPT if c in data.column_names])
        if isinstance(data, datasets.Dataset):
            for column in missing:
                data = data.add_column(column, [""] * len(data))
            data = data.add_column("component", [name] * len(data))
            data = data.to_iterable_dataset() if streaming else data
        else:
            data = data.map(lambda _, n=name, m=tuple(missing): {"component": n} | dict.fromkeys(m, ""))
        parts.append(count(data) if count is not None else data)
        probabilities.append(weight)
    if abs(sum(probabilities) - 1) > TOLERANCE:
        raise ValueError(f"mixture {mixture.name!r} with extra data has weights summing to {sum(probabilities):g}")
    columns = COLUMNS + ["tokens"] * (count is not None)
    features = datasets.Features({name: datasets.Value("string") for name in COLUMNS})
    if count is not None:
        features["tokens"] = datasets.Value("int64")
    parts = [p.select_columns(columns) for p in parts]
    parts = [p if list(p.features.items()) == list(features.items()) else p.cast(features) for p in parts]
    if by_tokens:
        return _token_mixture(parts, probabilities, mixture.stopping_strategy, seed, _tokenizer(tokenizer), announce)
    if mixture.balance == "bytes":
        per_byte = [w / _mean_bytes(p) for w, p in zip(probabilities, parts, strict=False)]
        probabilities = [x / sum(per_byte) for x in per_byte]
    if len(parts) == 1:
        return parts[0]
    return datasets.interleave_datasets(
        parts, probabilities=probabilities, seed=seed, stopping_strategy=mixture.stopping_strategy
    )


def _mean_bytes(dataset) -> float:
    """Mean UTF-8 size of (up to SIZE_SAMPLE of) a component's documents."""
    import datasets

    if isinstance(dataset, datasets.Dataset):
        texts = dataset.select(range(min(SIZE_SAMPLE, len(dataset))))["text"]
    else:
        texts = [row["text"] for row in dataset.take(SIZE_SAMPLE)]
    sizes = [len(t.encode("utf-8", "surrogatepass")) for t in texts]
    if not sizes or not sum(sizes):
        raise ValueError("a mixture component has no text to measure for balance: bytes")
    return sum(sizes) / len(sizes)


# ---------------------------------------------------------------------------------------------------------------
# Token shares
# ---------------------------------------------------------------------------------------------------------------


def _tokenizer(tokenizer):
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


def _token_mixture(parts: list, weights: list[float], stopping_strategy: str, seed: int, tokenizer, announce=None):
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
