"""Portable model folders: every kind of saved folder reads the same under transformers 4.x (a real 4.57 in its own
venv) and 5.x, carries the exact SentencePiece model, both rope keys and the right stop ids."""

from __future__ import annotations

import json

import pytest
import sentencepiece as spm

from codellama_hf.export.portability import (
    read_many_with_transformers4,
    read_with_this_transformers,
)
from tests.helpers.export_folder import sample_texts

RUNTIME_KEYS = ("is_local", "local_files_only", "name_or_path", "backend", "extra_special_tokens")

DIALOG = [
    {"role": "system", "content": "Answer in Python."},
    {"role": "user", "content": "Reverse a list."},
    {"role": "assistant", "content": "xs[::-1]"},
    {"role": "user", "content": "And a string?"},
]

KINDS = [
    "converted Meta checkpoint (32016)",
    "converted Meta checkpoint (32000)",
    "stage output (instruct)",
    "checkpoint",
    "adapter",
    "merged adapter",
]

PIECES = ["<s>", "</s>", "<unk>", "▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"]


@pytest.fixture(scope="module")
def transformers4_reports(folders) -> dict[str, dict]:
    """What transformers 4.57 reads from every folder (one subprocess for all of them)."""
    reports = read_many_with_transformers4(
        [folders[k][0] for k in KINDS], sample_texts(), pieces=PIECES, dialog=DIALOG
    )
    return dict(zip(KINDS, reports, strict=True))


@pytest.mark.parametrize("kind", KINDS)
def test_transformers_4_and_5_read_every_saved_folder_to_the_same_ids(kind, folders, transformers4_reports):
    folder, sentencepiece = folders[kind]
    texts = sample_texts()
    five = read_with_this_transformers(folder, texts, pieces=PIECES, dialog=DIALOG)
    four = transformers4_reports[kind]
    assert four["version"].startswith("4.") and five["version"].startswith("5.")
    for key in ("ids", "special", "all_special_ids", "decoded", "chat"):
        assert four[key] == five[key], f"{kind}: transformers 4.x and 5.x disagree on {key}"
    # ...and both are SentencePiece's own encoding (texts without special-token text; HF matches that text).
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    for text, ids in zip(texts, five["ids"], strict=True):
        if "<" not in text:
            assert ids == [sp.bos_id(), *sp.encode(text)]
    if kind == "stage output (instruct)":
        assert five["chat"] and five["chat"][0] == 1 and five["chat"].count(2) == 1  # one finished exchange


@pytest.mark.parametrize("kind", KINDS)
def test_every_saved_folder_is_complete(kind, folders):
    folder, sentencepiece = folders[kind]
    assert (folder / "tokenizer.model").read_bytes() == sentencepiece.read_bytes()
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert not set(RUNTIME_KEYS) & set(config), "run-time or 5-only keys leaked into tokenizer_config.json"
    assert not (folder / "chat_template.jinja").exists()
    sp = spm.SentencePieceProcessor(model_file=str(sentencepiece))
    infilling = sp.piece_to_id("▁<EOT>") != sp.unk_id()
    assert config["additional_special_tokens"] == (["▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"] if infilling else [])
    assert ("chat_template" in config) == (kind != "converted Meta checkpoint (32016)" and "32000" not in kind)
    if kind == "adapter":
        return  # an adapter folder holds tokenizer files only, no model config
    model_config = json.loads((folder / "config.json").read_text())
    theta = model_config["rope_theta"]
    assert model_config["rope_parameters"]["rope_theta"] == theta == (1e4 if "converted" in kind else 1e6)
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["bos_token_id"] == 1
    assert generation["eos_token_id"] == ([2, sp.piece_to_id("▁<EOT>")] if infilling else 2)
    assert generation.get("use_cache", True) is True  # a trained model generates with its KV cache
