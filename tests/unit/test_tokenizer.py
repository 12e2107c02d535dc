"""Code Llama tokenizer: token-exact against Meta's rules with the real Llama 2 SentencePiece model."""

import json
import random

import pytest
import sentencepiece as spm
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from codellama_hf import tokenizer as T
from tests.helpers import cli
from tests.helpers.golden import GOLDEN_PREFIX, GOLDEN_PSM, GOLDEN_SUFFIX
from tests.helpers.tokenizer import code_documents


class MetaTokenizer:
    """A direct transcription of Meta's llama/tokenizer.py + generation.py infilling rules over SentencePiece."""

    def __init__(self, model_file):
        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        self.prefix_id, self.suffix_id = self.sp.piece_to_id("▁<PRE>"), self.sp.piece_to_id("▁<SUF>")
        self.middle_id, self.eot_id = self.sp.piece_to_id("▁<MID>"), self.sp.piece_to_id("▁<EOT>")

    def encode_infilling(self, s):
        return self.sp.encode("☺" + s)[2:]

    def infilling_prompt(self, pre, suf, suffix_first=False):
        if suffix_first:
            return [
                self.sp.bos_id(),
                self.prefix_id,
                self.suffix_id,
                *self.encode_infilling(suf),
                self.middle_id,
                *self.sp.encode(pre),
            ]
        return [
            self.sp.bos_id(),
            self.prefix_id,
            *self.sp.encode(pre),
            self.suffix_id,
            *self.encode_infilling(suf),
            self.middle_id,
        ]


@pytest.fixture(scope="module")
def meta(codellama_tokenizer_dir):
    return MetaTokenizer(codellama_tokenizer_dir / "tokenizer.model")


def test_golden_psm_prompt(codellama_tokenizer):
    assert T.infilling_prompt(codellama_tokenizer, GOLDEN_PREFIX, GOLDEN_SUFFIX) == GOLDEN_PSM


def test_extended_vocabulary_layout(llama2_dir, codellama_tokenizer_dir, codellama_tokenizer):
    base = T.load_sp_model(llama2_dir / "tokenizer.model")
    ext = T.load_sp_model(codellama_tokenizer_dir / "tokenizer.model")
    assert len(ext.pieces) == 32016 and len(codellama_tokenizer) == 32016
    assert [p.piece for p in ext.pieces[:32000]] == [p.piece for p in base.pieces]
    assert [p.piece for p in ext.pieces[32000:]] == list(T.INFILLING_PIECES)
    sp = spm.SentencePieceProcessor(model_file=str(codellama_tokenizer_dir / "tokenizer.model"))
    expected = {"▁<PRE>": 32007, "▁<SUF>": 32008, "▁<MID>": 32009, "▁<EOT>": 32010}
    assert {p: sp.piece_to_id(p) for p in expected} == expected
    assert codellama_tokenizer.convert_tokens_to_ids(list(expected)) == list(expected.values())
    ids = T.infill_ids(codellama_tokenizer)
    assert (ids.bos, ids.eos, ids.prefix, ids.suffix, ids.middle, ids.eot) == (1, 2, 32007, 32008, 32009, 32010)
    # Users of AutoTokenizer see the sentinels as special tokens, skipped on decode.
    assert set(expected) <= set(codellama_tokenizer.all_special_tokens)


def test_tokenizer_json_matches_official_llama2(llama2_dir, tmp_path):
    """Without infilling pieces our tokenizer.json model is Llama 2's official one.

    Same vocab, same merges in order.
    """
    out = T.build_codellama_tokenizer(llama2_dir / "tokenizer.model", tmp_path / "base", infilling=False)
    ours = json.loads((out / "tokenizer.json").read_text())["model"]
    official = json.loads((llama2_dir / "tokenizer.json").read_text())["model"]
    assert ours["vocab"] == official["vocab"]
    as_pairs = lambda merges: [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]  # noqa: E731
    assert as_pairs(ours["merges"]) == as_pairs(official["merges"])
    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == 32000 and not T.supports_infilling(tok)
    with pytest.raises(ValueError, match="no infilling pieces"):
        T.infilling_prompt(tok, "a", "b")


@pytest.mark.parametrize("which", ["codellama", "tiny"])
def test_hf_files_equal_sentencepiece_on_real_code(which, codellama_tokenizer_dir, tiny_tokenizer_dir):
    folder = codellama_tokenizer_dir if which == "codellama" else tiny_tokenizer_dir
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    tok = AutoTokenizer.from_pretrained(folder)
    docs = code_documents()
    assert len(docs) >= 200
    hf = tok(docs, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    ours = T.encode_batch(tok, docs)
    for doc, hf_ids, our_ids in zip(docs, hf, ours, strict=False):
        expected = sp.encode(doc)
        assert hf_ids == expected
        assert our_ids == expected
        assert tok.decode(hf_ids) == doc == sp.decode(expected)
    # With special tokens on, AutoTokenizer adds BOS like Meta's encode(bos=True).
    assert tok(docs[0])["input_ids"] == [1, *sp.encode(docs[0])]


def test_infilling_prompts_equal_meta_rules_on_random_splits(codellama_tokenizer, meta):
    rng = random.Random(1234)
    docs = code_documents()
    for i in range(240):
        doc = docs[i % len(docs)]
        lo, hi = sorted(rng.randint(0, len(doc)) for _ in range(2))
        prefix, suffix = doc[:lo], doc[hi:]
        for suffix_first in (False, True):
            ours = T.infilling_prompt(codellama_tokenizer, prefix, suffix, suffix_first=suffix_first)
            assert ours == meta.infilling_prompt(prefix, suffix, suffix_first), (i, suffix_first)
        assert T.encode_infilling(codellama_tokenizer, suffix) == meta.encode_infilling(suffix)
        assert T.decode_infilling(codellama_tokenizer, T.encode_infilling(codellama_tokenizer, suffix)) == suffix


def test_control_text_never_becomes_control_ids(codellama_tokenizer, meta):
    text = 'x = "</s><s> ▁<PRE> <PRE> <SUF> <MID> <EOT>"\n'
    assert T.encode(codellama_tokenizer, text) == meta.sp.encode(text)
    assert not {1, 2, 32007, 32008, 32009, 32010} & set(T.encode(codellama_tokenizer, text))
    assert not {1, 2, 32007, 32008, 32009, 32010} & set(T.encode_infilling(codellama_tokenizer, text))


text_strategy = st.lists(
    st.sampled_from([*"ab xy_\n\t()é漢😀", "    ", "def ", "return ", "  ", "\n    "]), max_size=60
).map("".join)


@settings(max_examples=150, deadline=None)
@given(text=text_strategy, cuts=st.lists(st.floats(0, 1), min_size=2, max_size=2))
def test_encode_slices_equals_direct_encoding(codellama_tokenizer, text, cuts):
    lo, hi = sorted(int(c * len(text)) for c in cuts)
    plain = T.encode_batch(codellama_tokenizer, [text])
    slices = [(0, 0, lo, True), (0, lo, hi, False), (0, hi, len(text), False), (0, 0, hi, True)]
    got = T.encode_slices(codellama_tokenizer, [text], plain, slices)
    assert got == [
        T.encode(codellama_tokenizer, text[:lo]),
        T.encode_infilling(codellama_tokenizer, text[lo:hi]),
        T.encode_infilling(codellama_tokenizer, text[hi:]),
        T.encode(codellama_tokenizer, text[:hi]),
    ]


def test_tiny_tokenizer_is_reproducible_and_carries_the_pieces(tiny_tokenizer_dir, tmp_path):
    again = T.build_tiny_tokenizer(tmp_path / "again")
    assert (again / "tokenizer.model").read_bytes() == (tiny_tokenizer_dir / "tokenizer.model").read_bytes()
    assert (again / "tokenizer.json").read_bytes() == (tiny_tokenizer_dir / "tokenizer.json").read_bytes()
    sp = spm.SentencePieceProcessor(model_file=str(again / "tokenizer.model"))
    assert sp.get_piece_size() == T.TINY_VOCAB + 16
    assert [sp.piece_to_id(p) for p in T.SENTINELS] == [T.TINY_VOCAB + 7 + i for i in range(4)]


def test_cli_builds_tokenizer_and_reports_bad_input(llama2_dir, tmp_path):
    out = tmp_path / "cl"
    done = cli("tokenizer", "--llama2", str(llama2_dir / "tokenizer.model"), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "32016 pieces" in done.stdout
    assert AutoTokenizer.from_pretrained(out).convert_tokens_to_ids("▁<EOT>") == 32010

    again = cli("tokenizer", "--llama2", str(llama2_dir / "tokenizer.model"), "--out", str(out))
    assert again.returncode == 2 and "already exists" in again.stderr

    junk = tmp_path / "junk.model"
    junk.write_bytes(b"\x00\xffnot a model")
    bad = cli("tokenizer", "--llama2", str(junk), "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "junk.model" in bad.stderr
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x.*"))

    twice = cli("tokenizer", "--llama2", str(out / "tokenizer.model"), "--out", str(tmp_path / "y"))
    assert twice.returncode == 2 and "already extended" in twice.stderr
