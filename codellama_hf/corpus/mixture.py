"""Training mixtures: Table 1's sampling proportions as presets, user mixtures in YAML, sampled by interleaving.

Presets (paper §2.2, Table 1):
- "code": code 85%, natural language about code 8%, natural language 7% (Code Llama, 500B tokens);
- "python": Python 75%, code 10%, natural language about code 10%, natural language 5% (Code Llama - Python);
- "instruct_rehearsal": code 6% and natural language 2% of the instruct stage; the other 92% is `reserved` for the
  instruct data, which the caller passes as `extra` (or mixes itself with `Mixture.weights`).

Table 1 gives shares of the training tokens; the `balance` setting says what the weights are shares of:
- "tokens" (default): every document's tokens are counted and the next document comes from the component furthest
  behind its token share (token_balance.py: the counts, the schedule and its cached indices file, `token_shares`);
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

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

from codellama_hf.corpus.embedded import KINDS, embedded_corpus, is_validation
from codellama_hf.corpus.sources import read_sources
from codellama_hf.corpus.token_balance import (
    COLUMNS,
    count_tokens,
    counting_tokenizer,
    default_num_proc,
    token_mixture,
)
from codellama_hf.io import read_yaml_mapping

STOPPING_STRATEGIES = ("all_exhausted", "first_exhausted", "all_exhausted_without_replacement")
BALANCES = ("tokens", "documents", "bytes")
SIZE_SAMPLE = 2000
TOLERANCE = 1e-6
KEPT = ["text", "source", "path"]  # columns a component keeps; `component` is added (COLUMNS)


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
        # The same held-out rule as the embedded corpus: by file, from (corpus_seed, source, path); by row, from the
        # text, where a row has no path.
        want = split == "validation"
        ds = ds.filter(
            lambda s, p, t: is_validation(corpus_seed, s, p, text=t) == want,
            input_columns=["source", "path", "text"],
        )
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
        tokenizer = counting_tokenizer(tokenizer)
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
        return token_mixture(
            parts, probabilities, mixture.stopping_strategy, seed, counting_tokenizer(tokenizer), announce
        )
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
