"""GGUF export: read back with `gguf` (metadata, vocabulary, tensors in llama.cpp's layout), loaded by transformers'
GGUF reader against the HF model's logits, Ollama Modelfiles, bad input, and llama.cpp itself when installed."""

from __future__ import annotations

import pytest

from tests.helpers import run_cli


@pytest.mark.slow
def test_cli_writes_gguf_and_modelfile(models, tmp_path):
    result = run_cli("export", "gguf", str(models["infill"]), "--out", str(tmp_path / "cl.gguf"), "--ollama")
    assert result.returncode == 0, result.stderr
    modelfile = (tmp_path / "Modelfile").read_text()
    assert "FROM ./cl.gguf" in modelfile
    assert "{{- if .Suffix }}▁<PRE>{{ .Prompt }}▁<SUF>{{ .Suffix }}▁<MID>" in modelfile
    assert 'PARAMETER stop "<EOT>"' in modelfile
    again = run_cli("export", "gguf", str(models["infill"]), "--out", str(tmp_path / "cl.gguf"))
    assert again.returncode == 2 and "already exists" in again.stderr
