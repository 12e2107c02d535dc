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


@pytest.mark.slow
def test_transformers_reads_the_bpe_gguf_back_to_the_same_tokens_and_logits(smollm2_fim_model, tmp_path):
    """An independent GGUF reader (transformers' gguf_file= loader) gives the HF tokenizer's ids, FIM tokens
    included, and the HF model's logits (f16 weights)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from codellama_hf.export.gguf import export_gguf
    from codellama_hf.tokenizer import infilling_prompt

    out = export_gguf(smollm2_fim_model, tmp_path / "smol-fim.gguf", kind="f16")
    original = AutoTokenizer.from_pretrained(smollm2_fim_model)
    reread = AutoTokenizer.from_pretrained(tmp_path, gguf_file=out.name)
    prompt = infilling_prompt(original, "def add(a, b):\n    total = ", "\n    return total  # ünïcode\n")
    text = original.decode(prompt, skip_special_tokens=False)
    assert reread(text, add_special_tokens=False).input_ids == original(text, add_special_tokens=False).input_ids
    assert [reread.convert_tokens_to_ids(t) for t in ("<PRE>", "<SUF>", "<MID>", "<EOT>")] == list(range(49152, 49156))
    ids = torch.tensor([prompt])
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name, dtype=torch.float32).eval()
    expected = AutoModelForCausalLM.from_pretrained(smollm2_fim_model, dtype=torch.float32).eval()
    with torch.no_grad():
        diff = (loaded(ids).logits - expected(ids).logits).abs().max().item()
    assert diff < 2e-2, diff
