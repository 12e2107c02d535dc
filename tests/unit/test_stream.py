"""The streaming data path (data/stream.py): sharding by rank and stream, worker independence, O(1) resume, epochs."""

from __future__ import annotations

import itertools

import datasets
import pytest
import torch

from codellama_hf.data.fim import FIMConfig
from codellama_hf.data.packing import IGNORE_INDEX
from codellama_hf.data.stream import (
    POSITION_KEY,
    DocumentEncoder,
    PackedStream,
    Position,
    StreamSettings,
    stream_loader,
)
from tests.helpers.tokenizer import code_documents

FIM = FIMConfig(seed=3)


def _settings(**overrides) -> StreamSettings:
    values = dict(
        seq_len=256, micro_batch=2, world_size=1, streams_per_process=2, seed=3, chunk_documents=8, total_batches=12
    )
    values.update(overrides)
    return StreamSettings(**values)


def _stream(tokenizer, documents, rank=0, fim=FIM, **overrides) -> PackedStream:
    encoder = DocumentEncoder(tokenizer, overrides.get("seq_len", 256), fim)
    return PackedStream(documents, encoder, _settings(**overrides), rank=rank, pad_id=tokenizer.eos_token_id)


def _segments(batch) -> list[list[int]]:
    """The examples of a collated batch, cut at the position_ids restarts (padding dropped)."""
    found = []
    for ids, positions, labels in zip(batch["input_ids"], batch["position_ids"], batch["labels"], strict=True):
        starts = [i for i, p in enumerate(positions.tolist()) if p == 0] + [len(ids)]
        for start, end in itertools.pairwise(starts):
            if (labels[start + 1 : end] != IGNORE_INDEX).any():  # not padding
                found.append(ids[start:end].tolist())
    return found


def _batches(stream: PackedStream, workers: int) -> list[dict]:
    return list(stream_loader(stream, num_workers=workers))


@pytest.fixture(scope="module")
def documents():
    return datasets.Dataset.from_dict(
        {"text": [f"# document {i}\n{d[:700]}" for i, d in enumerate(code_documents(96))]}
    )


def test_every_rank_and_stream_reads_a_disjoint_share_and_together_all(tiny_tokenizer, documents):
    """One epoch over 2 ranks x 2 streams (2 workers each): every document exactly once, each in one stream."""
    plain = DocumentEncoder(tiny_tokenizer, 1024, None)
    expected = {tuple(e.ids) for e in plain(documents["text"], None, 0)[0]}
    seen: dict[tuple, tuple[int, int]] = {}
    for rank in (0, 1):
        stream = _stream(
            tiny_tokenizer, documents, rank, fim=None, world_size=2, micro_batch=1, seq_len=1024, total_batches=60
        )
        for batch in stream_loader(stream, num_workers=2):
            k, lane, epoch, _, _ = batch[POSITION_KEY]
            if epoch > 0:  # micro-batch 1: a row's position is after it, so epoch 0 ends exactly here
                continue
            for segment in _segments(batch):
                assert tuple(segment) not in seen, f"read twice: by {seen[tuple(segment)]} and {(rank, lane)}"
                seen[tuple(segment)] = (rank, lane)
    assert set(seen) == expected
    assert {owner for owner in seen.values()} == {(0, 0), (0, 1), (1, 0), (1, 1)}


def test_rows_do_not_depend_on_the_number_of_workers(tiny_tokenizer, documents):
    stream = _stream(tiny_tokenizer, documents, streams_per_process=2)
    zero, one, two = (_batches(stream, w) for w in (0, 1, 2))
    assert len(zero) == 12
    for a, b, c in zip(zero, one, two, strict=True):
        for key in ("input_ids", "labels", "position_ids"):
            assert torch.equal(a[key], b[key]) and torch.equal(a[key], c[key])
        assert a[POSITION_KEY] == b[POSITION_KEY] == c[POSITION_KEY]
        assert a.keys() == b.keys() == c.keys()  # arrays from workers are tensors again, nothing else added
    with pytest.raises(ValueError, match="dataloader_num_workers=3 must divide data_streams_per_process=2"):
        _batches(stream, 3)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_from_saved_positions_continues_exactly(tiny_tokenizer, documents, workers):
    """The positions carried by the batches resume the stream at any micro-batch, without reading what came before."""
    stream = _stream(tiny_tokenizer, documents, total_batches=20, chunk_documents=4)
    full = _batches(stream, 0)
    for cut in (1, 7, 10):
        positions = {}
        for batch in full[:cut]:
            k, lane, epoch, cursor, row = batch[POSITION_KEY]
            positions[lane] = Position(epoch, cursor, row)
        resumed = _batches(stream.resumed(cut, positions), workers)
        assert len(resumed) == 20 - cut
        for a, b in zip(full[cut:], resumed, strict=True):
            assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])


def test_a_resumed_stream_packs_only_its_current_chunk(tiny_tokenizer, documents):
    """O(1): a resume at batch 2 and at batch 200 tokenizes the same amount before its first batch."""
    stream = _stream(tiny_tokenizer, documents, total_batches=400, chunk_documents=4, micro_batch=1)

    class Counting:
        def __init__(self, inner):
            self.inner, self.texts = inner, 0

        def __call__(self, texts, components, epoch, rows):
            self.texts += len(texts)
            return self.inner(texts, components, epoch, rows)

    for cut in (2, 200):
        positions = {}
        for item in itertools.islice(iter(stream), cut):
            k, lane, epoch, cursor, row = item[POSITION_KEY]
            positions[lane] = Position(epoch, cursor, row)
        resumed = stream.resumed(cut, positions)
        resumed.encoder = counting = Counting(stream.encoder)
        first = next(iter(resumed))
        assert first[POSITION_KEY][0] == cut
        assert counting.texts <= 4  # one chunk of 4 documents, whatever the step


def test_each_pass_reshuffles_and_draws_new_fim_splits(tiny_tokenizer):
    short = datasets.Dataset.from_dict({"text": [f"def f{i}(x):\n    return x + {i}\n" for i in range(16)]})
    stream = _stream(tiny_tokenizer, short, streams_per_process=1, micro_batch=1, total_batches=200, chunk_documents=4)
    by_epoch: dict[int, set] = {}
    for item in stream:
        epoch = item[POSITION_KEY][2]
        for row in item["rows"]:
            by_epoch.setdefault(epoch, set()).add(tuple(row["input_ids"].tolist()))
    assert len(by_epoch) >= 3
    assert by_epoch[0] != by_epoch[1] != by_epoch[2]  # same documents, other FIM splits and packing


def test_copies_of_a_document_in_one_pass_get_splits_of_their_own(tiny_tokenizer):
    """FIM decisions are keyed by (seed, row, epoch): a text repeated within a pass (a token-balanced mixture
    repeats its small components) is split anew at every copy, and again at every pass."""
    from codellama_hf.data.fim import tokenize_documents

    text = "def add(first, second):\n    total = first + second\n    return total\n"
    always = FIMConfig(rate=1.0, seed=3)
    copies = datasets.Dataset.from_dict({"text": [text] * 16})
    stream = _stream(
        tiny_tokenizer, copies, fim=always, streams_per_process=1, micro_batch=1, chunk_documents=16, total_batches=40
    )
    calls = []

    class Recording:
        def __init__(self, inner):
            self.inner = inner

        def __call__(self, texts, components, epoch, rows):
            examples, counts = self.inner(texts, components, epoch, rows)
            calls.append((epoch, list(rows), [list(e.ids) for e in examples]))
            return examples, counts

    stream.encoder = Recording(stream.encoder)
    list(stream)
    by_epoch = {epoch: dict(zip(rows, samples, strict=True)) for epoch, rows, samples in calls}
    assert len(by_epoch) >= 2 and sorted(by_epoch[0]) == list(range(16))  # one pass reads every row once
    for epoch, samples in by_epoch.items():
        assert len({tuple(s) for s in samples.values()}) >= 12  # 16 copies, (nearly) all split differently
        for row, sample in samples.items():
            expected = tokenize_documents([text], [row], tiny_tokenizer, seq_len=256, fim=always, epoch=epoch)
            assert sample == expected.input_ids[0]
    assert sum(by_epoch[0][row] != by_epoch[1][row] for row in range(16)) >= 12  # a new pass, new splits


def test_bad_stream_settings_and_data(tiny_tokenizer, documents):
    with pytest.raises(ValueError, match="the corpus has 96 documents, fewer than the 128 streams"):
        _stream(tiny_tokenizer, documents, world_size=64)
    with pytest.raises(ValueError, match="micro_batch=0"):
        _settings(micro_batch=0)
    with pytest.raises(ValueError, match="no 'text' column"):
        _stream(tiny_tokenizer, documents.rename_column("text", "content"))
    blank = datasets.Dataset.from_dict({"text": ["   ", "", "\n"] * 4})
    with pytest.raises(ValueError, match="gives no training tokens"):
        next(iter(_stream(tiny_tokenizer, blank, streams_per_process=1)))


def test_workers_may_run_a_chunk_ahead_within_the_memory_cap(tiny_tokenizer, documents):
    """The DataLoader's default of 2 batches ahead makes one worker wait while the other tokenizes a chunk
    (bench/data_pipeline.py): the default covers a chunk of micro-batches, bounded by PREFETCH_BYTES per worker."""
    from codellama_hf.data.stream import PREFETCH_BYTES, default_prefetch

    stream = _stream(tiny_tokenizer, documents, chunk_documents=8, micro_batch=2)
    assert stream.chunk == 8 and default_prefetch(stream) == 4
    assert stream_loader(stream, num_workers=2).prefetch_factor == 4
    assert stream_loader(stream, num_workers=2, prefetch_factor=3).prefetch_factor == 3  # an explicit value wins
    wide = _stream(tiny_tokenizer, documents, chunk_documents=48, micro_batch=1, seq_len=1 << 20)
    assert default_prefetch(wide) == max(2, PREFETCH_BYTES // (24 << 20)) == 2  # 1M-token rows: the cap rules
