"""Shared by the tokenizer tests: helpers."""

from __future__ import annotations

import sysconfig
from pathlib import Path


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
