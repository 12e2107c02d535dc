"""Shared by the evaluation tests: helpers."""

from __future__ import annotations

import json
from pathlib import Path


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
