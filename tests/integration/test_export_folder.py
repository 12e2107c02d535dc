"""Portable model folders: every kind of saved folder reads the same under transformers 4.x (a real 4.57 in its own
venv) and 5.x, carries the exact SentencePiece model, both rope keys and the right stop ids."""

from __future__ import annotations

import json
import shutil

import pytest

from codellama_hf.export.model_folder import MissingSentencePiece, complete_model_folder
from codellama_hf.export.portability import (
    read_with_this_transformers,
    read_with_transformers4,
)
from tests.helpers import ROOT, run_cli
from tests.helpers.export_folder import sample_texts


@pytest.mark.slow
def test_a_folder_without_tokenizer_model_is_explained_and_completed(folders, tmp_path, tiny_tokenizer_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = folders["stage output (instruct)"][0]
    bare = tmp_path / "bare"
    AutoModelForCausalLM.from_pretrained(source).save_pretrained(bare)
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.save_pretrained(bare)
    (bare / "tokenizer.model").unlink(missing_ok=True)
    # what a transformers-only save leaves
    assert json.loads((bare / "tokenizer_config.json").read_text())["tokenizer_class"] == "TokenizersBackend"
    with pytest.raises(MissingSentencePiece, match="--sentencepiece PATH/tokenizer.model"):
        complete_model_folder(bare)

    other = tmp_path / "other.model"
    shutil.copyfile(folders["converted Meta checkpoint (32016)"][1], other)
    wrong = run_cli("export", "folder", str(bare), "--sentencepiece", str(other))
    assert wrong.returncode == 2 and "is not the SentencePiece model of" in wrong.stderr
    assert not (bare / "tokenizer.model").exists()  # nothing written on a mismatch

    done = run_cli("export", "folder", str(bare), "--sentencepiece", str(tiny_tokenizer_dir / "tokenizer.model"))
    assert done.returncode == 0, done.stderr
    texts = sample_texts()
    assert read_with_transformers4(bare, texts)["ids"] == read_with_this_transformers(source, texts)["ids"]
    assert json.loads((bare / "tokenizer_config.json").read_text())["chat_template"] == tokenizer.chat_template


@pytest.mark.slow
def test_a_stage_recipe_saves_portable_folders_and_a_quiet_console(tmp_path, tiny_tokenizer_dir):
    """`accelerate launch recipes/lcft.py` on CPU: output and checkpoints complete, no notice a user cannot act on."""
    import os
    import subprocess
    import sys

    out = tmp_path / "lcft"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1"]
    command += ["--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "recipes" / "lcft.py")]
    command += ["--max_steps", "2", "--save_steps", "1", "--output_dir", str(out)]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    console = result.stderr + result.stdout
    assert "gemm_4bit_forward" not in console  # bitsandbytes' kernel notice: nothing is quantized here
    assert "pin_memory" not in console  # torch's warning when pinning memory without an accelerator
    # (accelerate's "values were not passed" notice comes from the launcher itself: these flags are what avoids it)
    assert "were not passed" not in console
    texts = sample_texts()
    expected = read_with_this_transformers(tiny_tokenizer_dir, texts)["ids"]
    for folder in (out, out / "checkpoint-1", out / "checkpoint-2"):
        assert (folder / "tokenizer.model").read_bytes() == (tiny_tokenizer_dir / "tokenizer.model").read_bytes()
        assert read_with_transformers4(folder, texts)["ids"] == expected
        assert json.loads((folder / "config.json").read_text())["rope_theta"] == 1e6
