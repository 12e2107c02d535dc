"""Packing: exact per-document losses through a real tiny Llama, whole documents, one collator for every stage."""

import datasets
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from codellama_hf.data.fim import FIMConfig, tokenize_documents
from codellama_hf.data.packing import IGNORE_INDEX, Example, PackedCollator, pack, pack_examples, packing_efficiency
from codellama_hf.data.stream import DocumentEncoder, FIMPackingCollator, PackedStream, StreamSettings
from tests.helpers.tokenizer import code_documents


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_packed_loss_equals_each_document_alone(tiny_tokenizer, tiny_model_factory, attn):
    model = tiny_model_factory(len(tiny_tokenizer), attn_implementation=attn)
    docs = [d[:600] for d in code_documents(12)]
    samples = tokenize_documents(docs, None, tiny_tokenizer, seq_len=256, fim=FIMConfig(seed=1)).input_ids
    samples = [s[:120] for s in samples]  # several documents per 256-token row
    rows, lengths = pack(samples, 256, tiny_tokenizer.eos_token_id)
    assert len(rows) < len(samples)
    batch = PackedCollator()([{"input_ids": r, "seq_lengths": n} for r, n in zip(rows, lengths, strict=False)])
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        alone = {}
        for sample in samples:
            ids = torch.tensor([sample])
            out = model(input_ids=ids, use_cache=False).logits
            alone[tuple(sample)] = F.cross_entropy(out[0, :-1], ids[0, 1:]).item()
    checked = 0
    for b, doc_lengths in enumerate(lengths):
        start = 0
        for n in doc_lengths:
            ids = batch["input_ids"][b, start : start + n]
            labels = batch["labels"][b, start : start + n]
            assert labels[0] == IGNORE_INDEX and torch.equal(labels[1:], ids[1:])
            assert torch.equal(batch["position_ids"][b, start : start + n], torch.arange(n))
            loss = F.cross_entropy(logits[b, start : start + n - 1], ids[1:]).item()
            assert loss == pytest.approx(alone[tuple(ids.tolist())], abs=1e-5)
            start += n
            checked += 1
        assert (batch["labels"][b, start:] == IGNORE_INDEX).all()
    assert checked == len(samples)
    # The model's own loss on the packed batch is the token-weighted mean of the documents' losses.
    with torch.no_grad():
        total = model(**batch, use_cache=False).loss.item()
    weights = [len(s) - 1 for s in samples]
    expected = sum(alone[tuple(s)] * w for s, w in zip(samples, weights, strict=False)) / sum(weights)
    assert total == pytest.approx(expected, abs=1e-5)


def test_every_token_is_packed_once_and_long_documents_are_chunked():
    samples = [list(range(1000, 1000 + n)) for n in (5, 300, 17, 64, 64, 1, 130)]
    rows, lengths = pack(samples, 64, pad_id=0)
    assert all(len(r) == 64 for r in rows)
    pieces = []
    for row, doc_lengths in zip(rows, lengths, strict=False):
        start = 0
        for n in doc_lengths:
            pieces.append(row[start : start + n].tolist())
            start += n
        assert (row[start:] == 0).all()
    expected = [s[i : i + 64] for s in samples for i in range(0, len(s), 64)]
    assert sorted(pieces) == sorted(expected)


def test_stream_rows_are_full_and_efficient_on_real_code(tiny_tokenizer):
    docs = datasets.Dataset.from_dict({"text": code_documents(400)})
    settings = StreamSettings(
        seq_len=1024, micro_batch=4, world_size=1, streams_per_process=1, seed=2, chunk_documents=400, total_batches=8
    )
    encoder = DocumentEncoder(tiny_tokenizer, 1024, FIMConfig(seed=2))
    rows = list(PackedStream(docs, encoder, settings, rank=0, pad_id=tiny_tokenizer.eos_token_id).rows())
    assert len(rows) == 32 and all(len(r["input_ids"]) == 1024 for r in rows)
    assert packing_efficiency(rows) >= 0.98  # a sample of the rows of one 400-document chunk


def test_dialog_spans_survive_packing_and_chunking():
    dialog = Example(list(range(10, 20)), [4, 7, 8, 10])  # two answers
    long_doc = Example.document(list(range(100, 140)))  # cut into 16-token chunks
    rows = pack_examples([dialog, long_doc], 16, pad_id=0)
    batch = PackedCollator()(rows)
    learned = sorted(t for row in batch["labels"].tolist() for t in row if t != IGNORE_INDEX)
    chunk_starts = {100, 116, 132}  # the first token of each chunk is never a label
    assert learned == sorted([14, 15, 16, 18, 19] + [t for t in range(100, 140) if t not in chunk_starts])


def test_bad_input(tiny_tokenizer):
    with pytest.raises(ValueError, match="seq_len"):
        pack_examples([Example.document([1, 2, 3])], 1, pad_id=0)


def test_fim_as_a_data_collator_equals_the_stream(tiny_tokenizer):
    docs = [d[:1500] for d in code_documents(30)]
    fim = FIMConfig(seed=9)
    encoded, _ = DocumentEncoder(tiny_tokenizer, 512, fim)(docs, None, 0)
    expected = PackedCollator()(pack_examples(encoded, 512, tiny_tokenizer.eos_token_id))
    collator = FIMPackingCollator(tiny_tokenizer, seq_len=512, fim=fim)
    batch = collator([{"text": d} for d in docs])
    for key in ("input_ids", "labels", "position_ids"):
        assert torch.equal(batch[key], expected[key])
    collator.set_epoch(1)
    assert not torch.equal(collator([{"text": d} for d in docs])["input_ids"], batch["input_ids"])


@st.composite
def _examples(draw):
    examples = []
    for _ in range(draw(st.integers(1, 8))):
        n = draw(st.integers(1, 40))
        cuts = sorted(draw(st.lists(st.integers(0, n), max_size=6)))
        spans = [x for a, b in zip(cuts[0::2], cuts[1::2], strict=False) if a < b for x in (a, b)]
        examples.append(Example(draw(st.lists(st.integers(3, 999), min_size=n, max_size=n)), spans))
    return examples


@settings(max_examples=80, deadline=None)
@given(examples=_examples(), seq_len=st.integers(8, 48))
def test_collated_tensors_follow_their_definition_token_by_token(examples, seq_len):
    """The collator's array code against its definition, one token at a time (module docstring's picture)."""
    rows = pack_examples(examples, seq_len, pad_id=0)
    batch = PackedCollator("eager")(rows)
    for b, row in enumerate(rows):
        starts, start = [], 0
        for n in [*row["seq_lengths"], seq_len - sum(row["seq_lengths"])]:
            starts += [start] * n
            start += n
        learned = {
            t for lo, hi in zip(row["label_spans"][0::2], row["label_spans"][1::2], strict=True) for t in range(lo, hi)
        }
        for t in range(seq_len):
            first_or_padding = t == starts[t] or t >= sum(row["seq_lengths"])
            label = int(row["input_ids"][t]) if t in learned and not first_or_padding else IGNORE_INDEX
            assert batch["labels"][b, t] == label
            assert batch["position_ids"][b, t] == t - starts[t]
            assert batch["input_ids"][b, t] == int(row["input_ids"][t])
    assert batch["input_ids"].dtype == batch["labels"].dtype == batch["position_ids"].dtype == torch.long
