"""The streaming data path of every stage: documents -> (rank, stream) shards -> tokenize + FIM + pack in workers.

The documents are one memory-mapped Arrow table (`datasets.Dataset`), read in place. Each process owns
`streams_per_process` independent *streams*; stream `l` of rank `r` is shard `s = r * L + l` of `S = world * L`.
Per epoch `e`, the table's chunks of `C` consecutive documents are permuted by `(seed, e)` and dealt round-robin to
the shards, so the shards are disjoint and together cover every document once per epoch (what
`datasets.distributed.split_dataset_by_node` does for a map-style dataset, plus a reshuffle per pass):

    chunks (epoch e)  P[0] P[1] P[2] P[3] P[4] P[5] P[6] P[7] ...      S = 2 ranks x 2 streams = 4 shards
    shard 0 (r0 l0)   P[0]                P[4]
    shard 1 (r0 l1)        P[1]                P[5]
    shard 2 (r1 l0)             P[2]                P[6]
    shard 3 (r1 l1)                  P[3]                P[7]

A stream reads its chunks in order; each chunk is shuffled, tokenized in one batch by the Rust tokenizer, FIM-
transformed with epoch `e` (decisions keyed by seed, document and epoch: fim.py) and packed into rows; the rows are
shuffled, and the stream goes on with its next chunk, and after its last chunk with epoch e + 1. Micro-batch `k` of a
rank is the next `micro_batch` rows of stream `k mod L`. All of this runs inside the DataLoader's workers (worker `i`
of `W` serves the streams `l = i mod W`, so `W` must divide `L`): tokenization scales with cores, no rank waits for
another, and the rows do not depend on the number of workers.

Resuming is O(1): every micro-batch carries its stream's position after it (epoch, chunk cursor, row in chunk);
the trainer saves the last consumed position of each stream with the checkpoint, and a resumed stream re-packs only
the one chunk it was in. Nothing consumed is read, tokenized or sent again.
"""

from __future__ import annotations

import copy
import logging
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from codellama_hf.data.fim import KIND_NAMES, FIMConfig, tokenize_documents
from codellama_hf.data.packing import Example, PackedCollator, pack_examples
from codellama_hf.tokenizer import prepare_encoders

logger = logging.getLogger(__name__)

POSITION_KEY = "data_position"  # in each batch: [batch k, stream l, epoch, chunk cursor, row], popped by the trainer


@dataclass(frozen=True)
class StreamSettings:
    """Everything that fixes the sequence of rows a rank reads; a resume must use the same values."""

    seq_len: int
    micro_batch: int
    world_size: int
    streams_per_process: int
    seed: int
    chunk_documents: int
    total_batches: int  # micro-batches per process over the whole run

    def __post_init__(self):
        for name, value in asdict(self).items():
            if not isinstance(value, int) or value < (0 if name == "seed" else 1):
                raise ValueError(f"{name}={value!r}: must be a positive integer")


@dataclass(frozen=True)
class Position:
    """Where a stream stands: the next row to read is row `row` of chunk number `cursor` of its shard in `epoch`."""

    epoch: int = 0
    cursor: int = 0
    row: int = 0


class DocumentEncoder:
    """Texts -> examples: `<s> text </s>` or a FIM sample per document (fim.py), the loss on every token.
    With `fim_components`, only documents of those mixture components are FIM candidates.

    `rows` (the documents' rows in the table, which the stream passes) are the documents' identities for the FIM
    decisions; without them the text is. The Rust encoders are built here, once, so that DataLoader workers
    inherit them rather than rebuild them when they start.
    """

    def __init__(self, tokenizer, seq_len: int, fim: FIMConfig | None, fim_components: Sequence[str] | None = None):
        self.tokenizer, self.seq_len, self.fim = tokenizer, seq_len, fim
        self.fim_components = None if fim_components is None else frozenset(fim_components)
        if hasattr(tokenizer, "backend_tokenizer"):
            prepare_encoders(tokenizer)

    def __call__(
        self, texts: Sequence, components: Sequence | None, epoch: int, rows: Sequence[int] | None = None
    ) -> tuple[list[Example], Counter]:
        candidates = None
        if self.fim is not None and self.fim_components is not None:
            candidates = [c in self.fim_components for c in components] if components else [False] * len(texts)
        done = tokenize_documents(
            texts, rows, self.tokenizer, seq_len=self.seq_len, fim=self.fim, epoch=epoch, candidates=candidates
        )
        counts = Counter(KIND_NAMES[k] for k in done.kinds)
        counts.update({f"skipped: {reason}": n for reason, n in done.skipped.items()})
        return [Example.document(ids) for ids in done.input_ids], counts


# (texts, components or None, epoch, rows) -> examples and counts; `rows` are the documents' rows in the table: their
# identity for the FIM decisions, so two copies of one text (a mixture repeating a small component) split apart
Encoder = Callable[[Sequence, Sequence | None, int, Sequence[int]], tuple[list[Example], Counter]]


def chunk_size(documents: int, shards: int, chunk_documents: int) -> int:
    """Documents per chunk: the packing buffer, smaller when the table is too small to give every shard a chunk."""
    if documents < shards:
        raise ValueError(
            f"the corpus has {documents} documents, fewer than the {shards} streams that read it (processes x "
            "data_streams_per_process); use more data or fewer streams"
        )
    return max(1, min(chunk_documents, documents // shards))


class _Shard:
    """One stream's shard of the table and its reading position."""

    def __init__(self, stream: PackedStream, shard: int, position: Position):
        self.stream, self.shard, self.position = stream, shard, position
        self._rows: list[dict] | None = None
        self._rows_key: tuple[int, int] | None = None
        self._ids, self._ids_epoch = None, None

    def _chunk_ids(self, epoch: int) -> np.ndarray:
        s = self.stream
        if self._ids_epoch != epoch:
            order = np.random.default_rng([s.settings.seed, epoch, 0]).permutation(s.chunks)
            self._ids, self._ids_epoch = order[self.shard :: s.shards], epoch
        return self._ids

    def _chunk_rows(self, epoch: int, chunk: int) -> list[dict]:
        s = self.stream
        start, end = chunk * s.chunk, min(len(s.documents), (chunk + 1) * s.chunk)
        order = np.random.default_rng([s.settings.seed, epoch, 1, int(chunk)]).permutation(end - start)
        part = s.documents[start:end]
        texts = [part[s.text_column][i] for i in order]
        components = [part["component"][i] for i in order] if "component" in part else None
        examples, counts = s.encoder(texts, components, epoch, (order + start).tolist())
        s.counts.update(counts)
        rows = pack_examples(examples, s.settings.seq_len, s.pad_id)
        shuffle = np.random.default_rng([s.settings.seed, epoch, 2, int(chunk)]).permutation(len(rows))
        return [rows[i] for i in shuffle]  # best-fit emits long examples first: do not favour them

    def take(self, count: int) -> list[dict]:
        """The next `count` rows; the position moves past them."""
        taken: list[dict] = []
        epoch, cursor, row = self.position.epoch, self.position.cursor, self.position.row
        empty_chunks = 0
        chunk_ids = self._chunk_ids(epoch)
        while len(taken) < count:
            if cursor == len(chunk_ids):  # the shard is used up: the next pass, reshuffled, with new FIM splits
                epoch, cursor, row = epoch + 1, 0, 0
                chunk_ids = self._chunk_ids(epoch)
            key = (epoch, int(chunk_ids[cursor]))
            if self._rows_key != key:
                self._rows, self._rows_key = self._chunk_rows(*key), key
            rows = self._rows
            if not rows:
                empty_chunks += 1
                if empty_chunks > len(chunk_ids):
                    raise ValueError(
                        f"data stream {self.shard} gives no training tokens: every document of its shard is empty or "
                        f"skipped ({dict(self.stream.counts)})"
                    )
            else:
                empty_chunks = 0
            while row < len(rows) and len(taken) < count:
                taken.append(rows[row])
                row += 1
            if row >= len(rows):
                cursor, row = cursor + 1, 0
        self.position = Position(epoch, cursor, row)
        return taken


class PackedStream(torch.utils.data.IterableDataset):
    """One rank's micro-batches of packed rows (module docstring), computed in the DataLoader's workers.

    `start_batch` and `positions` resume it: micro-batches before `start_batch` were consumed, and `positions`
    maps each stream to where it stood after its last consumed micro-batch.
    """

    def __init__(
        self,
        documents,
        encoder: Encoder,
        settings: StreamSettings,
        *,
        rank: int,
        pad_id: int,
        text_column: str = "text",
        start_batch: int = 0,
        positions: dict[int, Position] | None = None,
    ):
        super().__init__()
        if not 0 <= rank < settings.world_size:
            raise ValueError(f"rank {rank} outside world size {settings.world_size}")
        if text_column not in documents.column_names:
            raise ValueError(
                f"the documents have no {text_column!r} column (columns: {documents.column_names}); set text_column"
            )
        columns = [text_column] + (["component"] if "component" in documents.column_names else [])
        self.documents, self.encoder, self.settings = documents.select_columns(columns), encoder, settings
        self.rank, self.pad_id, self.text_column = rank, pad_id, text_column
        self.shards = settings.world_size * settings.streams_per_process
        self.chunk = chunk_size(len(documents), self.shards, settings.chunk_documents)
        self.chunks = math.ceil(len(documents) / self.chunk)
        self.start_batch = start_batch
        self.positions = dict(positions or {})
        self.counts: Counter = Counter()

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        L = self.settings.streams_per_process
        if L % workers:
            raise ValueError(
                f"dataloader_num_workers={workers} must divide data_streams_per_process={L} (each worker serves "
                "whole streams, so the rows do not depend on the number of workers)"
            )
        shards = {
            stream: _Shard(self, self.rank * L + stream, self.positions.get(stream, Position())) for stream in range(L)
        }
        # Worker i serves micro-batches start + i, start + i + W, ...: the DataLoader takes them round-robin from
        # worker 0, so the first batch after a resume is micro-batch `start_batch`, whatever it is modulo W.
        for k in range(self.start_batch + worker, self.settings.total_batches, workers):
            shard = shards[k % L]
            rows = shard.take(self.settings.micro_batch)
            p = shard.position
            yield {"rows": rows, POSITION_KEY: [k, k % L, p.epoch, p.cursor, p.row]}

    def resumed(self, start_batch: int, positions: dict[int, Position]) -> PackedStream:
        """The same stream continuing after `start_batch` consumed micro-batches, its streams at `positions`."""
        other = copy.copy(self)
        other.start_batch, other.positions, other.counts = start_batch, dict(positions), Counter()
        return other

    def rows(self, batches: int | None = None):
        """Rows of this rank in micro-batch order (in this process; for tests and benches)."""
        for i, item in enumerate(self):
            if batches is not None and i == batches:
                return
            yield from item["rows"]


ARRAYS_KEY = "_stream_arrays"  # the keys a worker sent as numpy arrays; StreamLoader makes them tensors again


class StreamCollator:
    """A stream item -> the collator's tensors plus the item's position (for the checkpoint).

    In a DataLoader worker the tensors leave as numpy arrays: torch sends a tensor from a worker through a new
    shared-memory segment, about a millisecond per tensor at each end, which for a micro-batch of packed rows cost
    the worker a quarter of its time (bench/data_pipeline.py); an array is pickled through the worker's pipe.
    """

    def __init__(self, collator=None):
        self.collator = collator or PackedCollator()

    def __call__(self, item: dict) -> dict:
        batch = self.collator(item["rows"])
        batch[POSITION_KEY] = list(item[POSITION_KEY])  # not a tensor: nothing moves it to a device or shards it
        if torch.utils.data.get_worker_info() is not None:
            sent = [k for k, v in batch.items() if isinstance(v, torch.Tensor) and v.dtype in _NUMPY_DTYPES]
            batch.update({k: batch[k].numpy() for k in sent})
            batch[ARRAYS_KEY] = sent
        return batch


_NUMPY_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8, torch.bool, torch.float32, torch.float64)


class StreamLoader(torch.utils.data.DataLoader):
    """The stream's DataLoader: a worker's arrays become tensors again here, pinned if asked (StreamCollator)."""

    def __init__(self, *args, pin_memory: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.pin_arrays = pin_memory

    def __iter__(self):
        for batch in super().__iter__():
            for key in batch.pop(ARRAYS_KEY, ()):
                batch[key] = torch.from_numpy(batch[key])
            if self.pin_arrays:
                batch = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            yield batch


PREFETCH_BYTES = 64 << 20  # per worker: the most batches (ids, labels, positions as int64) it may hold ahead


def default_prefetch(stream: PackedStream) -> int:
    """Micro-batches each worker may prepare ahead: about one chunk's worth, at most PREFETCH_BYTES.

    A chunk's rows come in a burst (one batched tokenization, then packing), and the DataLoader takes batches
    from its workers in turn, so with its default of 2 a worker that is done waits while the other tokenizes:
    bench/data_pipeline.py measured 2 workers at 1.00x of 1 with 2, 1.54x with a chunk's worth.
    """
    s = stream.settings
    per_batch = s.micro_batch * s.seq_len * 3 * 8
    return max(2, min(math.ceil(stream.chunk / s.micro_batch), PREFETCH_BYTES // per_batch))


def stream_loader(
    stream: PackedStream,
    *,
    num_workers: int,
    collator=None,
    prefetch_factor: int | None = None,
    pin_memory=False,
    persistent_workers: bool = False,
):
    """The DataLoader over a stream: one item per micro-batch, collated inside the workers.

    Workers are forked after the stream's encoder has built its Rust encoders (DocumentEncoder), so starting one
    costs a fork, not a tokenizer build; `persistent_workers` keeps them for the next pass (a bench's repeats).
    `prefetch_factor` defaults to `default_prefetch`.
    """
    streams = stream.settings.streams_per_process
    if num_workers and streams % num_workers:
        raise ValueError(
            f"dataloader_num_workers={num_workers} must divide data_streams_per_process={streams} (each worker "
            "serves whole streams, so the rows do not depend on the number of workers)"
        )
    prefetch = prefetch_factor or default_prefetch(stream)
    kwargs = {"prefetch_factor": prefetch, "persistent_workers": persistent_workers} if num_workers else {}
    return StreamLoader(
        stream,
        batch_size=None,
        num_workers=num_workers,
        collate_fn=StreamCollator(collator),
        pin_memory=pin_memory,
        **kwargs,
    )


class FIMPackingCollator:
    """Raw documents -> FIM (per document) -> packed rows -> tensors, at batch time, for on-the-fly pipelines.

    The stream's transform applied to one batch of examples (a `text` field): decisions still come from (seed,
    document identity, epoch). Call `set_epoch` between epochs. Returns as many rows as the documents fill.
    """

    def __init__(
        self,
        tokenizer,
        *,
        seq_len: int,
        fim: FIMConfig | None = None,
        text_column: str = "text",
        attn_implementation: str = "sdpa",
    ):
        self.encoder = DocumentEncoder(tokenizer, seq_len, fim)
        self.attn_implementation = attn_implementation
        self.seq_len, self.pad_id, self.text_column, self.epoch = seq_len, tokenizer.eos_token_id, text_column, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __call__(self, examples: Sequence[dict]) -> dict[str, torch.Tensor]:
        encoded, _ = self.encoder([e[self.text_column] for e in examples], None, self.epoch)
        return PackedCollator(self.attn_implementation)(pack_examples(encoded, self.seq_len, self.pad_id))
