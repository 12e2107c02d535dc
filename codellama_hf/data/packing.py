"""Packing tokenized examples into fixed-length rows, and the one collator that turns rows into training tensors.

Every stage trains on packed rows: several examples (documents, chunks of a long document, or dialogs) end to end,
padding after the last one. An example carries *label spans*, the positions whose tokens are learned (a document:
all of it; a dialog: the assistant's answers, Meta's `chat_completion` layout, see chat.py). One row of 16 tokens
holding a 6-token document `d`, a 7-token dialog `q a` (answer `a` learned) and 3 padding tokens `.`:

    input_ids     d d d d d d q q q q a a a . . .
    position_ids  0 1 2 3 4 5 0 1 2 3 4 5 6 0 1 2
    labels        - d d d d d - - - - a a a - - -      (- is -100)

`position_ids` restart at 0 for every example; run the model with `attention_mask=None` and `use_cache=False` and
transformers derives a block-diagonal mask from them (eager, sdpa and flex attention; flash-attention's varlen
kernel on GPU), so no token attends to or is predicted from another example. The first token of every example is
never a label, and padding is a segment of its own with no labels.

Examples are packed whole by best-fit decreasing within a buffer; an example longer than the row is cut into
row-sized chunks (chunks are never FIM-transformed: `fim.tokenize_documents` only transforms samples that fit).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

IGNORE_INDEX = -100


@dataclass
class Example:
    """Token ids and the [start, end, start, end, ...] spans (example-local) that carry labels."""

    ids: Sequence[int]
    label_spans: Sequence[int]

    @classmethod
    def document(cls, ids: Sequence[int]) -> Example:
        return cls(ids, [0, len(ids)])


def chunk(samples: Sequence[Sequence[int]], seq_len: int) -> list[Sequence[int]]:
    """Cut samples longer than the context into seq_len-sized chunks (the last one shorter)."""
    return [sample[start : start + seq_len] for sample in samples for start in range(0, len(sample), seq_len)]


def _chunk_example(example: Example, seq_len: int) -> list[Example]:
    if len(example.ids) <= seq_len:
        return [example]
    pieces = []
    for start in range(0, len(example.ids), seq_len):
        end = min(start + seq_len, len(example.ids))
        spans = []
        for s, e in zip(example.label_spans[0::2], example.label_spans[1::2], strict=True):
            lo, hi = max(s, start), min(e, end)
            if lo < hi:
                spans += [lo - start, hi - start]
        pieces.append(Example(example.ids[start:end], spans))
    return pieces


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


def pack_examples(examples: Sequence[Example], seq_len: int, pad_id: int) -> list[dict]:
    """Rows of exactly seq_len tokens: `input_ids`, `seq_lengths` (one per example) and row-level `label_spans`."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    pieces = [piece for example in examples for piece in _chunk_example(example, seq_len)]
    rows = []
    for members in best_fit_decreasing([len(p.ids) for p in pieces], seq_len):
        members.sort()  # input order inside a row
        ids = np.full(seq_len, pad_id, dtype=np.int32)
        spans, lengths, used = [], [], 0
        for i in members:
            piece = pieces[i]
            ids[used : used + len(piece.ids)] = piece.ids
            spans += [used + s for s in piece.label_spans]
            lengths.append(len(piece.ids))
            used += len(piece.ids)
        rows.append({"input_ids": ids, "seq_lengths": lengths, "label_spans": spans})
    return rows


def pack(samples: Sequence[Sequence[int]], seq_len: int, pad_id: int) -> tuple[list[np.ndarray], list[list[int]]]:
    """Pack plain documents (loss on every token); returns the rows and their document lengths."""
    rows = pack_examples([Example.document(s) for s in samples], seq_len, pad_id)
    return [r["input_ids"] for r in rows], [r["seq_lengths"] for r in rows]


class PackedCollator:
    """Packed rows -> `input_ids`, `labels` and the attention inputs of `attn_implementation` (module docstring).

    The one collator of every stage: plain documents and dialogs differ only in their label spans. A row without
    `label_spans` learns every token of every example. There is no attention_mask: `position_ids` (and, for
    flash-attention, `cu_seq_lens_q/k` and `max_length_q/k`) carry the example boundaries
    (codellama_hf.attention.packed_attention_inputs); run the model with use_cache=False. `attn_implementation`
    is the resolved backend (the stage sets it).
    """

    def __init__(self, attn_implementation: str = "sdpa"):
        self.attn_implementation = attn_implementation

    def __call__(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        from codellama_hf.attention import packed_attention_inputs

        # numpy for the per-row slicing (a torch op per span costs microseconds, the stream calls this per batch)
        ids = np.stack([np.asarray(r["input_ids"]) for r in rows]).astype(np.int64, copy=False)
        labels = np.full_like(ids, IGNORE_INDEX)
        for b, row in enumerate(rows):
            starts = np.cumsum([0, *row["seq_lengths"]])
            spans = row.get("label_spans")
            if spans is None:
                spans = [0, int(starts[-1])]
            for start, end in zip(spans[0::2], spans[1::2], strict=True):
                labels[b, start:end] = ids[b, start:end]
            labels[b, starts[:-1]] = IGNORE_INDEX  # nothing predicted across examples
            labels[b, starts[-1] :] = IGNORE_INDEX  # padding
        attention = packed_attention_inputs(
            [r["seq_lengths"] for r in rows], self.attn_implementation, seq_len=ids.shape[1]
        )
        return {"input_ids": torch.from_numpy(ids), "labels": torch.from_numpy(labels), **attention}


def packing_efficiency(rows: Sequence[dict]) -> float:
    """Share of the packed tokens that belong to examples rather than padding."""
    if not rows:
        return 0.0
    used = sum(sum(r["seq_lengths"]) for r in rows)
    return used / sum(len(r["input_ids"]) for r in rows)
