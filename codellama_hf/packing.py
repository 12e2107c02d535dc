"""Packing tokenized documents into fixed-length training rows, with no attention and no loss across documents.

Each row holds several documents (or chunks of one long document) end to end. The collators hand the model what its
attention backend needs to keep them apart (`codellama_hf.attention.packed_attention_inputs`): `position_ids` that
restart at 0 for every document, from which transformers derives the document mask for eager, sdpa and
flex_attention, plus flash-attention's varlen offsets (`cu_seq_lens_q/k`, `max_length_q/k`) for flash backends.
Tested on CPU at micro-batch 2 and 4, logits equal to each document run alone within 1e-5: eager, sdpa,
flex_attention and flash-attention's varlen path with plain-torch kernels (tests/test_attention.py); on a GPU with
the real kernels by tests/gpu/. Run the model with `attention_mask=None` and `use_cache=False`. `labels` are -100
at the first token of every document and on padding, so no token is predicted from another document.

Samples are packed whole by best-fit decreasing within a buffer of documents; a document longer than the context
is cut into context-sized chunks (chunks are never FIM-transformed: `fim.tokenize_documents` only transforms
samples that fit). Packing runs in one process in document order, so the rows depend only on the input order, not
on how many processes tokenized it.
"""

from __future__ import annotations

import bisect
import logging
from collections import Counter
from collections.abc import Sequence

import datasets
import numpy as np
import torch

from codellama_hf.fim import KIND_NAMES, FIMConfig, tokenize_documents

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


def chunk(samples: Sequence[Sequence[int]], seq_len: int) -> list[Sequence[int]]:
    """Cut samples longer than the context into seq_len-sized chunks (the last one shorter)."""
    return [sample[start : start + seq_len] for sample in samples for start in range(0, len(sample), seq_len)]


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Bins of item indices; longest items first, each into the fullest bin that still has room."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin index), kept sorted
    for i in order:
        size = lengths[i]
        slot = bisect.bisect_left(free, (size, -1))
        if slot == len(free):
            bins.append([i])
            room, b = capacity - size, len(bins) - 1
        else:
            room, b = free.pop(slot)
            bins[b].append(i)
            room -= size
        if room > 0:
            bisect.insort(free, (room, b))
    return bins


def pack(samples: Sequence[Sequence[int]], seq_len: int, pad_id: int) -> tuple[list[np.ndarray], list[list[int]]]:
    """Pack token sequences into rows of exactly seq_len tokens; returns the rows and their document lengths."""
    pieces = [np.asarray(p, dtype=np.int32) for p in chunk(samples, seq_len)]
    rows, lengths = [], []
    for members in best_fit_decreasing([len(p) for p in pieces], seq_len):
        members.sort()  # document order inside a row
        row = np.full(seq_len, pad_id, dtype=np.int32)
        used = 0
        for i in members:
            row[used : used + len(pieces[i])] = pieces[i]
            used += len(pieces[i])
        rows.append(row)
        lengths.append([len(pieces[i]) for i in members])
    return rows, lengths


def pack_dataset(
    dataset: datasets.Dataset | datasets.IterableDataset,
    tokenizer,
    *,
    seq_len: int,
    fim: FIMConfig | None = None,
    epoch: int = 0,
    text_column: str = "text",
    id_column: str | None = None,
    num_proc: int | None = None,
    buffer_documents: int = 2000,
) -> datasets.Dataset | datasets.IterableDataset:
    """Tokenize (with FIM) and pack a text dataset into rows of `input_ids` (seq_len tokens) and `seq_lengths`.

    `PackedCollator` turns rows into input_ids / labels / position_ids tensors.

    Map-style datasets are processed eagerly (cached by `datasets`); iterable (streaming) datasets lazily. For
    map-style input the FIM outcome of every document is logged as a table of counts.
    """
    columns = dataset.column_names
    if columns is not None and text_column not in columns:
        raise ValueError(f"dataset has no {text_column!r} column (columns: {columns}); set text_column")
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    pad_id = tokenizer.eos_token_id

    def tokenize(batch):
        done = tokenize_documents(
            batch[text_column],
            batch[id_column] if id_column else None,
            tokenizer,
            seq_len=seq_len,
            fim=fim,
            epoch=epoch,
        )
        return {"input_ids": done.input_ids, "fim": done.kinds}

    def pack_batch(batch):
        rows, lengths = pack(batch["input_ids"], seq_len, pad_id)
        return {"input_ids": rows, "seq_lengths": lengths}

    map_kwargs = (
        {} if isinstance(dataset, datasets.IterableDataset) else {"num_proc": num_proc, "desc": "tokenize+FIM"}
    )
    tokenized = dataset.map(tokenize, batched=True, batch_size=256, remove_columns=columns, **map_kwargs)
    if isinstance(tokenized, datasets.Dataset):
        counts = Counter(tokenized["fim"])
        logger.info(
            "%d documents: %s",
            sum(counts.values()),
            ", ".join(f"{KIND_NAMES[k]} {v}" for k, v in sorted(counts.items())),
        )
        map_kwargs = {"desc": "pack"}
    return tokenized.map(
        pack_batch, batched=True, batch_size=buffer_documents, remove_columns=["input_ids", "fim"], **map_kwargs
    )


class PackedCollator:
    """Rows -> input_ids / labels and the attention inputs of `attn_implementation`, from each row's document lengths.

    There is no attention_mask: position_ids (and, for flash-attention, cu_seq_lens / max_length) carry the document
    boundaries (run the model with use_cache=False). Labels are -100 at every document start and on padding, so no
    token is predicted across a boundary. `attn_implementation` is the resolved backend (training sets it).
    """

    def __init__(self, attn_implementation: str = "sdpa"):
        self.attn_implementation = attn_implementation

    def __call__(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        from codellama_hf.attention import packed_attention_inputs

        input_ids = torch.tensor(np.stack([np.asarray(r["input_ids"]) for r in rows]), dtype=torch.long)
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        for b, row in enumerate(rows):
            starts = np.cumsum([0, *row["seq_lengths"]])
            for start, end in zip(starts[:-1], starts[1:], strict=False):
                labels[b, start + 1 : end] = input_ids[b, start + 1 : end]
        attention = packed_attention_inputs(
            [r["seq_lengths"] for r in rows], self.attn_implementation, seq_len=input_ids.shape[1]
        )
        return {"input_ids": input_ids, "labels": labels, **attention}


class FIMPackingCollator:
    """Raw documents -> FIM (per document) -> packed rows -> tensors, at batch time, for on-the-fly pipelines.

    The same transform as `pack_dataset`, applied to each batch of examples (a `text` field and, optionally, an id
    field): decisions still come from (seed, document identity, epoch), so a batch gives the same tokens whenever
    and wherever it is collated. Call `set_epoch` between epochs. Returns as many rows as the documents fill.
    """

    def __init__(
        self,
        tokenizer,
        *,
        seq_len: int,
        fim: FIMConfig | None = None,
        text_column: str = "text",
        id_column: str | None = None,
        attn_implementation: str = "sdpa",
    ):
        self.tokenizer, self.seq_len, self.fim = tokenizer, seq_len, fim
        self.text_column, self.id_column, self.epoch = text_column, id_column, 0
        self.attn_implementation = attn_implementation

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __call__(self, examples: Sequence[dict]) -> dict[str, torch.Tensor]:
        done = tokenize_documents(
            [e[self.text_column] for e in examples],
            [e[self.id_column] for e in examples] if self.id_column else None,
            self.tokenizer,
            seq_len=self.seq_len,
            fim=self.fim,
            epoch=self.epoch,
        )
        rows, lengths = pack(done.input_ids, self.seq_len, self.tokenizer.eos_token_id)
        collate = PackedCollator(self.attn_implementation)
        return collate([{"input_ids": r, "seq_lengths": n} for r, n in zip(rows, lengths, strict=False)])


def packing_efficiency(dataset: datasets.Dataset) -> float:
    """Share of the packed tokens that belong to documents rather than padding."""
    if len(dataset) == 0:
        return 0.0
    seq_len = len(dataset[0]["input_ids"])
    used = sum(sum(lengths) for lengths in dataset["seq_lengths"])
    return used / (len(dataset) * seq_len)
