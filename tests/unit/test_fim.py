"""FIM: the paper's layouts to the token, the stated rates, and decisions that survive workers and restarts."""

import math

import datasets
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codellama_hf import tokenizer as T
from codellama_hf.data.fim import PLAIN, PSM, SPM, TOO_LONG, FIMConfig, decide, tokenize_documents
from codellama_hf.data.stream import DocumentEncoder, PackedStream, StreamSettings, stream_loader
from tests.helpers.tokenizer import code_documents, decode_fim

ALWAYS = FIMConfig(rate=1.0)


def test_psm_prompt_is_a_strict_prefix_and_spm_agrees_through_mid(codellama_tokenizer):
    tok, ids = codellama_tokenizer, T.infill_ids(codellama_tokenizer)
    docs = code_documents(120)
    out = tokenize_documents(docs, None, tok, seq_len=8192, fim=ALWAYS)
    seen = set()
    for doc, sample, kind in zip(docs, out.input_ids, out.kinds, strict=False):
        if kind not in (PSM, SPM):
            continue
        d = decide(ALWAYS, doc.encode(), 0, len(doc))
        prefix, middle, suffix = doc[: d.lo], doc[d.lo : d.hi], doc[d.hi :]
        prompt = T.infilling_prompt(tok, prefix, suffix, suffix_first=kind == SPM)
        if kind == PSM:
            assert sample[: len(prompt)] == prompt and len(sample) > len(prompt)
            assert sample[len(prompt) :] == [*T.encode_infilling(tok, middle), ids.eot]
        else:
            cut = prompt.index(ids.middle) + 1
            assert sample[:cut] == prompt[:cut]
            assert tok.decode(sample[cut:-1]).startswith(prefix)
            assert sample[cut:-1] == T.encode(tok, prefix + middle)
        assert decode_fim(tok, sample, kind) == doc
        seen.add(kind)
    assert seen == {PSM, SPM}


@settings(max_examples=120, deadline=None)
@given(
    doc=st.lists(st.sampled_from([*"abc _\n\t(é漢😀", "    ", "def f():", " return x"]), min_size=1, max_size=50)
    .map("".join)
    .filter(str.strip),
    seed=st.integers(0, 2**32),
)
def test_fim_samples_decode_back_to_the_document(tiny_tokenizer, doc, seed):
    out = tokenize_documents([doc], None, tiny_tokenizer, seq_len=4096, fim=FIMConfig(rate=1.0, seed=seed))
    assert out.kinds == [decide(FIMConfig(rate=1.0, seed=seed), doc.encode(), 0, len(doc)).spm + 1]
    assert decode_fim(tiny_tokenizer, out.input_ids[0], out.kinds[0]) == doc


def test_rates_within_statistical_bounds(tiny_tokenizer):
    n = 4000
    docs = [f"def f_{i}(x):\n    return x * {i}\n" for i in range(n)]
    cfg = FIMConfig(rate=0.9, spm_rate=0.5, seed=7)
    kinds = tokenize_documents(docs, None, tiny_tokenizer, seq_len=256, fim=cfg).kinds
    fim = sum(k in (PSM, SPM) for k in kinds)
    spm = sum(k == SPM for k in kinds)
    # Five standard deviations of a binomial: fails by chance with probability < 1e-6.
    assert abs(fim - 0.9 * n) < 5 * math.sqrt(n * 0.9 * 0.1)
    assert abs(spm - 0.5 * fim) < 5 * math.sqrt(fim * 0.25)
    # Split points are uniform over the characters: lo/len ~ 1/3 and hi/len ~ 2/3 on average.
    decisions = [decide(cfg, d.encode(), 0, len(d)) for d in docs]
    mean_lo = sum(d.lo / len(doc) for d, doc in zip(decisions, docs, strict=False)) / n
    mean_hi = sum(d.hi / len(doc) for d, doc in zip(decisions, docs, strict=False)) / n
    assert abs(mean_lo - 1 / 3) < 5 * math.sqrt(1 / 18 / n) and abs(mean_hi - 2 / 3) < 5 * math.sqrt(1 / 18 / n)


def test_decisions_depend_on_seed_document_and_epoch_only(tiny_tokenizer):
    docs = code_documents(60)
    cfg = FIMConfig(seed=3)
    forward = tokenize_documents(docs, None, tiny_tokenizer, seq_len=4096, fim=cfg)
    backward = tokenize_documents(docs[::-1], None, tiny_tokenizer, seq_len=4096, fim=cfg)
    assert backward.input_ids[::-1] == forward.input_ids  # any order
    resumed = tokenize_documents(docs[25:], None, tiny_tokenizer, seq_len=4096, fim=cfg)
    assert resumed.input_ids == forward.input_ids[25:]  # restart from the middle of the stream
    other_epoch = tokenize_documents(docs, None, tiny_tokenizer, seq_len=4096, fim=cfg, epoch=1)
    assert other_epoch.input_ids != forward.input_ids
    by_id = tokenize_documents(docs, [f"doc{i}" for i in range(len(docs))], tiny_tokenizer, seq_len=4096, fim=cfg)
    assert by_id.input_ids != forward.input_ids  # an id column replaces the text as identity


def test_same_output_with_one_and_two_worker_processes(tiny_tokenizer):
    ds = datasets.Dataset.from_dict({"text": code_documents(80)})
    plan = StreamSettings(
        seq_len=512, micro_batch=2, world_size=1, streams_per_process=2, seed=5, chunk_documents=16, total_batches=8
    )
    encoder = DocumentEncoder(tiny_tokenizer, 512, FIMConfig(seed=5))
    stream = PackedStream(ds, encoder, plan, rank=0, pad_id=tiny_tokenizer.eos_token_id)
    one, two = ([b["input_ids"].tolist() for b in stream_loader(stream, num_workers=w)] for w in (1, 2))
    assert one == two


def test_only_documents_that_fit_are_transformed(tiny_tokenizer):
    short, long = "x = 1\n" * 10, "y = 2\n" * 400
    out = tokenize_documents([short, long], None, tiny_tokenizer, seq_len=64, fim=ALWAYS)
    assert out.kinds == [PSM if out.kinds[0] == PSM else SPM, PLAIN]
    assert len(out.input_ids[1]) > 64  # packing cuts it into chunks; chunks are never FIM samples
    # A document that fits plain but not once split (FIM adds tokens) stays plain and is counted as such.
    plain_len = len(tokenize_documents([short], None, tiny_tokenizer, seq_len=64, fim=None).input_ids[0])
    tight = tokenize_documents([short], None, tiny_tokenizer, seq_len=plain_len, fim=ALWAYS)
    assert tight.kinds == [TOO_LONG] and len(tight.input_ids[0]) == plain_len


def test_bad_input_is_skipped_and_counted_or_refused(tiny_tokenizer, tiny_tokenizer_dir, tmp_path):
    docs = ["ok = 1\n", "", "   \n\t", b"\xff\xfe broken", "lone \udc80 surrogate", None, b"fine = 2\n"]
    out = tokenize_documents(docs, None, tiny_tokenizer, seq_len=128, fim=ALWAYS)
    assert len(out.input_ids) == 2
    assert dict(out.skipped) == {"empty": 2, "undecodable": 2, "not text": 1}
    by_row = tokenize_documents(docs, list(range(len(docs))), tiny_tokenizer, seq_len=128, fim=ALWAYS)
    assert dict(by_row.skipped) == dict(out.skipped)  # the same checks when rows, not texts, are the identities

    base = T.save_tokenizer(T.train_tiny_sentencepiece(), tmp_path / "no_fim")
    from transformers import AutoTokenizer

    with pytest.raises(ValueError, match="no infilling pieces"):
        tokenize_documents(["a = 1"], None, AutoTokenizer.from_pretrained(base), seq_len=128, fim=ALWAYS)
    with pytest.raises(ValueError, match="too short for a FIM sample"):
        tokenize_documents(["a = 1"], None, tiny_tokenizer, seq_len=4, fim=ALWAYS)
    with pytest.raises(ValueError, match="rate"):
        FIMConfig(rate=1.5)
