"""Shared by the tokenizer tests: helpers."""

from __future__ import annotations

import sysconfig
from pathlib import Path

from codellama_hf import tokenizer as T
from codellama_hf.data import fim


def code_documents(n=220, min_chars=200):
    """Real Python sources from the standard library, in a fixed order."""
    docs = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("**/*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        if len(text) >= min_chars:
            docs.append(text[:20000])
        if len(docs) == n:
            return docs
    raise AssertionError("not enough standard-library sources")


def decode_fim(tok, sample, kind):
    """Put a FIM sample back in document order, decoding each part the way it was encoded.

    (A PSM sample with an empty prefix has the same sentinel layout as an SPM sample, so the kind is needed.)
    """
    ids = T.infill_ids(tok)
    assert sample[:2] == [ids.bos, ids.prefix] and sample[-1] == ids.eot
    suf, mid = sample.index(ids.suffix), sample.index(ids.middle)
    suffix = T.decode_infilling(tok, sample[suf + 1 : mid])
    if kind == fim.SPM:  # <s> PRE SUF suffix MID enc(prefix + middle) EOT
        assert suf == 2
        return tok.decode(sample[mid + 1 : -1]) + suffix
    # <s> PRE enc(prefix) SUF suffix MID middle EOT; Meta's `encode` adds one leading space, decode removes it
    return tok.decode(sample[2:suf]) + T.decode_infilling(tok, sample[mid + 1 : -1]) + suffix
