"""Code Llama - Instruct's training stage: self-instruct dialogs plus rehearsal data (paper §2.5).

The instruct stage (`run_instruct`, recipes/instruct.py) trains on the dialogs that codellama_hf.selfinstruct
produces plus a rehearsal mixture (paper: code 6%, natural language 2%), mixed in proportion to tokens, packed with
labels only on the assistant's tokens.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from codellama_hf.chat import CHAT_TEMPLATE, IGNORE_INDEX, encode_dialogs, exchanges
from codellama_hf.io import atomic_dir
from codellama_hf.selfinstruct.prompts import solution_message

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------------
# 7. Instruct stage data: dialogs + rehearsal, mixed by tokens, packed with assistant-only labels
# ---------------------------------------------------------------------------------------------------------------

INSTRUCT = "instruct"  # the mixture component the dialogs fill: the mixture's `reserved` share
STDLIB = "stdlib"  # instruct source keyword: offline demo dialogs from the Python standard library


def stdlib_dialogs(max_dialogs: int = 2000):
    """Offline demo dialogs for the tiny preset: documented public functions of this machine's standard library,
    asked for by signature and docstring, answered with their source. Real text and code, NOT the paper's data."""
    import sysconfig

    import datasets

    rows = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        source = path.read_text(encoding="utf-8", errors="replace")
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in tree.body:
            doc = ast.get_docstring(node) if isinstance(node, ast.FunctionDef) else None
            code = ast.get_source_segment(source, node) if doc else None
            if not doc or node.name.startswith("_") or not code or len(code) > 1500:
                continue
            request = " ".join(doc.split("\n\n")[0].split())
            signature = f"{node.name}({ast.unparse(node.args)})"
            rows.append(
                [
                    {"role": "user", "content": f"Write a Python function `{signature}`: {request}"},
                    {"role": "assistant", "content": solution_message(code)},
                ]
            )
            if len(rows) == max_dialogs:
                break
        if len(rows) == max_dialogs:
            break
    return datasets.Dataset.from_dict({"text": [json.dumps(r, ensure_ascii=False) for r in rows]})


def load_dialogs(sources: Sequence[str], split: str = "train"):
    """Instruct dialogs from `datasets` with a `messages` column (our self-instruct output, JSON/JSONL/Parquet files,
    saved datasets or datasets names), or "stdlib": one `text` column of JSON dialogs, checked when tokenized."""
    import datasets

    parts = []
    for spec in [sources] if isinstance(sources, str) else sources:
        spec = str(spec)
        path = Path(spec).expanduser()
        if spec == STDLIB:
            parts.append(stdlib_dialogs())
            continue
        if path.is_dir() and any((path / m).exists() for m in ("dataset_info.json", "dataset_dict.json")):
            data = datasets.load_from_disk(str(path))
            data = data[split] if isinstance(data, datasets.DatasetDict) else data
        elif path.is_file():
            builder = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}.get(path.suffix)
            if builder is None:
                raise ValueError(f"instruct source {spec}: use a .jsonl, .json or .parquet file or a saved dataset")
            data = datasets.load_dataset(builder, data_files=str(path), split="train")
        else:
            try:
                data = datasets.load_dataset(spec, split=split)
            except Exception as err:  # noqa: BLE001 - datasets raises many kinds; name the source and the reason
                raise FileNotFoundError(
                    f"instruct source {spec!r}: not a file, saved dataset or loadable datasets "
                    f"name ({type(err).__name__}: {err})"
                ) from None
        if "messages" not in data.column_names:
            raise ValueError(
                f"instruct source {spec}: needs a 'messages' column of {{role, content}} turns (columns: "
                f"{data.column_names})"
            )
        parts.append(
            data.map(
                lambda m: {"text": json.dumps(m, ensure_ascii=False, default=str)},
                input_columns="messages",
                remove_columns=data.column_names,
                desc=f"reading {spec}",
            )
        )
    if not parts:
        raise ValueError(
            "no instruct data: set mixture_sources: {instruct: [...]} (a self-instruct dataset, "
            "messages files, or 'stdlib' for the offline demo)"
        )
    return datasets.concatenate_datasets(parts)


def _label_spans(labels: Sequence[int]) -> list[int]:
    """[start, end, start, end, ...] of the runs of positions that carry a label."""
    mask = np.concatenate([[False], np.asarray(labels) != IGNORE_INDEX, [False]])
    return np.flatnonzero(mask[1:] != mask[:-1]).tolist()


def _encode_instruct(texts: list[str], tokenizer, seq_len: int, skipped: Counter | None) -> list[tuple[list, list]]:
    """JSON dialogs -> (ids, label spans). Invalid dialogs, dialogs without an answer and dialogs longer than seq_len
    are skipped; they are counted in `skipped` unless it is None, and the first invalid one is logged."""
    counts, first_error, dialogs = Counter(), None, []
    for text in texts:
        try:
            dialog = json.loads(text)
            turns = exchanges(dialog)
        except ValueError as err:
            counts["invalid dialog"] += 1
            first_error = first_error or err
            continue
        if turns[-1][1] is None:
            if len(turns) == 1:
                counts["no assistant answer"] += 1
                continue
            dialog = dialog[:-1]  # a trailing question has nothing to learn from
        dialogs.append(dialog)
    examples = []
    for ids, labels in encode_dialogs(tokenizer, dialogs):
        if len(ids) > seq_len:
            counts[f"dialog longer than seq_len {seq_len}"] += 1
        else:
            examples.append((ids, _label_spans(labels)))
    if skipped is not None:
        if first_error and not skipped["invalid dialog"]:
            logger.warning("skipping invalid instruct dialogs (first: %s)", first_error)
        skipped.update(counts)
    return examples


def _encode_documents(texts: list[str], tokenizer, seq_len: int, skipped: Counter | None) -> list[tuple[list, list]]:
    """Rehearsal documents as in the other stages (`<s> text </s>`, cut into seq_len chunks), loss on every token."""
    from codellama_hf.fim import tokenize_documents
    from codellama_hf.packing import chunk

    done = tokenize_documents(texts, None, tokenizer, seq_len=seq_len, fim=None)
    if skipped is not None:
        skipped.update({f"document {reason}": count for reason, count in done.skipped.items()})
    return [(list(piece), [0, len(piece)]) for piece in chunk(done.input_ids, seq_len)]


class _Component:
    """Tokenized examples of one mixture component, reshuffled and repeated whenever it runs out.

    `encode(texts, tokenizer, seq_len, skipped)` turns a batch of texts into examples; what it skips is counted
    in `self.skipped` during the first pass over the component only (later passes skip the same rows again).
    """

    def __init__(self, name: str, dataset, encode, tokenizer, seq_len: int, seed: int, batch_size: int):
        self.name, self.dataset, self.encode, self.seed, self.batch_size = name, dataset, encode, seed, batch_size
        self.tokenizer, self.seq_len = tokenizer, seq_len
        self.tokens = self.examples = self.epochs = 0
        self.skipped: Counter = Counter()

    def __iter__(self) -> Iterator[tuple[list, list]]:
        while True:
            before = self.examples
            skipped = self.skipped if self.epochs == 0 else None
            for batch in self.dataset.shuffle(seed=self.seed + self.epochs).iter(batch_size=self.batch_size):
                for example in self.encode(batch["text"], self.tokenizer, self.seq_len, skipped):
                    self.examples += 1
                    self.tokens += len(example[0])
                    yield example
            self.epochs += 1
            if self.examples == before:
                raise ValueError(f"mixture component {self.name!r} gives no training examples (skips are logged)")


def mix_by_tokens(components: dict[str, _Component], weights: dict[str, float]) -> Iterator[tuple[list, list]]:
    """Interleave components so that each one's share of the tokens tracks its weight: always draw from the one
    furthest below its share. Deterministic, so every process and every resume sees the same stream."""
    streams = {name: iter(component) for name, component in components.items()}
    while True:
        name = min(streams, key=lambda n: (components[n].tokens / weights[n], -weights[n]))
        yield next(streams[name])


def pack_examples(examples: Sequence[tuple[list, list]], seq_len: int, pad_id: int) -> list[dict]:
    """Best-fit packing of (ids, label spans) examples into rows of seq_len tokens, spans moved with them."""
    from codellama_hf.packing import best_fit_decreasing

    rows = []
    for members in best_fit_decreasing([len(ids) for ids, _ in examples], seq_len):
        members.sort()  # example order inside a row
        ids = np.full(seq_len, pad_id, dtype=np.int32)
        spans, lengths, used = [], [], 0
        for i in members:
            example, example_spans = examples[i]
            ids[used : used + len(example)] = example
            spans += [used + s for s in example_spans]
            lengths.append(len(example))
            used += len(example)
        rows.append({"input_ids": ids, "label_spans": spans, "seq_lengths": lengths})
    return rows


class SFTCollator:
    """Packed rows -> input_ids / labels and the attention inputs of `attn_implementation` (no attention_mask:
    position_ids restart per example; flash backends also get varlen offsets, codellama_hf.attention).

    Labels copy the input only inside each row's label spans (a dialog's answers and their </s>; a rehearsal
    document whole) and are -100 at every example start and on padding, so nothing is predicted across examples.
    """

    def __init__(self, attn_implementation: str = "sdpa"):
        self.attn_implementation = attn_implementation

    def __call__(self, rows: Sequence[dict]) -> dict:
        import torch

        from codellama_hf.attention import packed_attention_inputs

        input_ids = torch.tensor(np.stack([np.asarray(r["input_ids"]) for r in rows]), dtype=torch.long)
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        for b, row in enumerate(rows):
            spans = row["label_spans"]
            for start, end in zip(spans[0::2], spans[1::2], strict=False):  # (start, end) pairs
                labels[b, start:end] = input_ids[b, start:end]
            for start in np.cumsum([0, *row["seq_lengths"]])[:-1]:
                labels[b, start] = IGNORE_INDEX
        attention = packed_attention_inputs(
            [r["seq_lengths"] for r in rows], self.attn_implementation, seq_len=input_ids.shape[1]
        )
        return {"input_ids": input_ids, "labels": labels, **attention}


def _sft_rows(components: dict, weights: dict, seq_len: int, pad_id: int, buffer: int, rows: int, seed: int):
    """`rows` packed rows from the token-proportional mixture, packing `buffer` examples at a time."""
    stream = mix_by_tokens(components, weights)
    rng = np.random.default_rng(seed)
    made = 0
    while made < rows:
        packed = pack_examples([next(stream) for _ in range(buffer)], seq_len, pad_id)
        for index in rng.permutation(len(packed)):  # best-fit emits long examples first: do not favour them
            yield packed[index]
            made += 1
            if made == rows:
                return


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def instruct_mixture(data_args):
    """(name, rehearsal components, token weights, component sources, instruct sources) from the data arguments,
    checked; cheap, so the stage calls it before loading a model."""
    from codellama_hf.corpus import get_mixture

    if data_args.fim_rate:
        raise ValueError(f"fim_rate={data_args.fim_rate}: the instruct stage trains on dialogs without FIM; set 0")
    if data_args.dataset_mixture is None:  # dialogs only, no rehearsal
        name, rehearsal, weights, sources = "none (dialogs only)", (), {INSTRUCT: 1.0}, {}
        instruct_sources = data_args.dataset_sources
    else:
        mixture = get_mixture(data_args.dataset_mixture)
        name, rehearsal, weights = mixture.name, mixture.components, {INSTRUCT: mixture.reserved, **mixture.weights}
        sources = dict(data_args.mixture_sources_dict() or {})
        instruct_sources = sources.pop(INSTRUCT, None)
        if not instruct_sources:
            raise ValueError(
                "mixture_sources has no 'instruct' entry: name the instruct dialogs (a self-instruct "
                "dataset folder, messages files, datasets names, or 'stdlib' for the offline "
                "demo)"
            )
        if not mixture.reserved:
            raise ValueError(
                f"mixture {name!r} reserves no share for the instruct dialogs; give it `reserved` "
                "(instruct_rehearsal reserves 0.92)"
            )
        unknown = set(sources) - set(mixture.weights)
        if unknown:
            raise ValueError(
                f"mixture_sources names {sorted(unknown)}, which mixture {name!r} lacks "
                f"(components: {sorted(mixture.weights)} and {INSTRUCT!r})"
            )
    return name, rehearsal, weights, sources, instruct_sources


def build_instruct_dataset(data_args, config, tokenizer):
    """Packed SFT rows for the instruct stage and a description of them for the lineage.

    `dataset_mixture` (preset "instruct_rehearsal": code 6%, natural language 2%, 92% reserved) gives the rehearsal
    components and weights; `mixture_sources.instruct` names the dialogs that fill the reserved share, and other
    keys override component sources as in the other stages. Weights are shares of the training tokens. Without a
    mixture (`dataset_mixture: none`), `dataset_sources` name the dialogs and nothing is rehearsed.
    Map-style data is packed once by the main process into exactly max_steps x sequences_per_step rows under
    output_dir/packed/, which every process and every resume reads; with `streaming` rows are packed on the fly
    (deterministically, so a resume replays the same stream).
    """
    import shutil

    import datasets

    from codellama_hf.corpus import Mixture, load_mixture
    from codellama_hf.training import PACKED_DIR

    name, rehearsal, weights, sources, instruct_sources = instruct_mixture(data_args)
    seed = config.data_seed if config.data_seed is not None else config.seed
    with config.main_process_first(desc="reading the instruct data and the rehearsal corpus"):
        parts = {INSTRUCT: load_dialogs(instruct_sources, data_args.dataset_split)}
        for component in rehearsal:
            parts[component.name] = load_mixture(
                Mixture(component.name, (replace(component, weight=1.0),)),
                data_args.dataset_split,
                seed=seed,
                streaming=data_args.streaming,
                sources={component.name: sources[component.name]} if component.name in sources else None,
            )
    rows = config.plan.max_steps * config.plan.sequences_per_step
    info = {
        "mixture": name,
        "mixture_weights": weights,
        "weights_are": "token shares",
        "instruct_sources": instruct_sources,
        "mixture_sources": sources,
        "split": data_args.dataset_split,
        "streaming": data_args.streaming,
        "seq_len": config.seq_len,
        "rows": rows,
        "fim": None,
    }
    # Documents are long: encode a few at a time (a batch is encoded whole, however little of it gets used).
    encoders = {name: (_encode_instruct, 256) if name == INSTRUCT else (_encode_documents, 8) for name in parts}
    components = {
        name: _Component(name, part, encoders[name][0], tokenizer, config.seq_len, seed, encoders[name][1])
        for name, part in parts.items()
    }
    gen_kwargs = {
        "components": components,
        "weights": weights,
        "seq_len": config.seq_len,
        "pad_id": tokenizer.eos_token_id,
        "buffer": data_args.packing_buffer,
        "rows": rows,
        "seed": seed,
    }
    features = datasets.Features(
        {
            "input_ids": datasets.List(datasets.Value("int32")),
            "label_spans": datasets.List(datasets.Value("int32")),
            "seq_lengths": datasets.List(datasets.Value("int32")),
        }
    )
    if data_args.streaming:
        return datasets.IterableDataset.from_generator(_sft_rows, gen_kwargs=gen_kwargs, features=features), info

    # Keyed by the settings, as in training.build_train_dataset: the packed rows are the run's frozen data.
    key = _digest(
        {
            "data": asdict(data_args),
            "tokenizer": tokenizer.backend_tokenizer.to_str(),
            "seq_len": config.seq_len,
            "rows": rows,
            "seed": seed,
        }
    )
    folder = Path(config.output_dir) / PACKED_DIR / key
    with config.main_process_first(desc="packing the instruct data"):
        if not (folder / "rows.json").is_file():
            with atomic_dir(folder, overwrite=True) as tmp:
                packed = datasets.Dataset.from_generator(
                    _sft_rows, features=features, gen_kwargs=gen_kwargs, cache_dir=str(tmp / "cache"), fingerprint=key
                )
                packed.save_to_disk(str(tmp / "rows"))
                label_tokens = sum(
                    (e - s) for spans in packed["label_spans"] for s, e in zip(spans[0::2], spans[1::2], strict=False)
                )
                total = sum(c.tokens for c in components.values()) or 1
                realised = {
                    "components": {
                        n: {
                            "examples": c.examples,
                            "tokens": c.tokens,
                            "epochs": c.epochs,
                            "token_share": round(c.tokens / total, 4),
                        }
                        for n, c in components.items()
                    },
                    "skipped": {n: dict(c.skipped) for n, c in components.items() if c.skipped},
                    "label_tokens": label_tokens,
                }
                (tmp / "rows.json").write_text(json.dumps(realised, indent=2) + "\n")
                del packed
                shutil.rmtree(tmp / "cache")
                if realised["skipped"]:
                    logger.info("instruct data: skipped %s", realised["skipped"])
    packed = datasets.load_from_disk(str(folder / "rows"))
    info.update(json.loads((folder / "rows.json").read_text()), packed_dir=str(folder))
    return packed, info


# ---------------------------------------------------------------------------------------------------------------
# 8. The instruct stage
# ---------------------------------------------------------------------------------------------------------------


def _build_and_describe(data_args, config, tokenizer):
    """The instruct rows, with the realised token shares printed for the person at the terminal."""
    from accelerate import PartialState
    from rich.console import Console

    rows, info = build_instruct_dataset(data_args, config, tokenizer)
    if "components" in info and PartialState().is_main_process:
        shares = ", ".join(f"{n} {c['token_share']:.1%}" for n, c in info["components"].items())
        Console(highlight=False).print(
            f"data: {info['rows']:,} rows; token shares {shares}; skipped {info['skipped'] or 'nothing'}"
        )
    return rows, info


INSTRUCT_HOOKS = dict(
    build_data=_build_and_describe, collator=SFTCollator(), chat_template=CHAT_TEMPLATE, check_data=instruct_mixture
)


def run_instruct(*, default_config: str | os.PathLike, argv: list[str] | None = None) -> Path | None:
    """Fine-tune on dialogs + rehearsal and save the model with the chat template in its tokenizer: the shared
    stage machinery (training.run_stage) with the instruct data, its collator and the chat template."""
    from codellama_hf.training import run_stage

    return run_stage(INSTRUCT, default_config=default_config, argv=argv, **INSTRUCT_HOOKS)


def main(*, default_config: str | os.PathLike) -> None:
    """Entry point of recipes/instruct.py: bad input ends in one line that names the problem (exit 2)."""
    from codellama_hf.training import main as stage_main

    stage_main(INSTRUCT, default_config=default_config, **INSTRUCT_HOOKS)
