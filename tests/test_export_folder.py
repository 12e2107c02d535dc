"""Portable model folders: every kind of saved folder reads the same under transformers 4.x (a real 4.57 in its own
venv) and 5.x, carries the exact SentencePiece model, both rope keys and the right stop ids."""

from __future__ import annotations

import json
import shutil
import sysconfig
from pathlib import Path

import pytest
import sentencepiece as spm
import torch

from codellama_hf.export.model_folder import MissingSentencePiece, complete_model_folder
from codellama_hf.export.portability import (
    read_many_with_transformers4,
    read_with_this_transformers,
    read_with_transformers4,
)
from tests.conftest import ROOT, run_cli

RUNTIME_KEYS = ("is_local", "local_files_only", "name_or_path", "backend", "extra_special_tokens")
DIALOG = [
    {"role": "system", "content": "Answer in Python."},
    {"role": "user", "content": "Reverse a list."},
    {"role": "assistant", "content": "xs[::-1]"},
    {"role": "user", "content": "And a string?"},
]


def sample_texts() -> list[str]:
    """Real code (standard-library excerpts) plus the cases where loaders differ: special-token text, tabs, unicode."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = [(stdlib / name).read_text(encoding="utf-8")[:3000] for name in ("json/encoder.py", "textwrap.py")]
    return texts + [
        'def remove_non_ascii(s: str) -> str:\n    """ ',
        "\n    return result\n",
        "x = 1 </s> <s> ▁<PRE> ▁<EOT> <PRE>",
        "\tif été == '日本':\n\t\tpass  # ünïcödé 🙂",
        "",
        "   leading spaces",
    ]


def _train_and_save(out: Path, tokenizer_dir: Path, *, chat_template: str | None, base=None) -> Path:
    """A one-step Trainer run with a checkpoint, then `save_final`: a stage output and a checkpoint folder."""
    import datasets
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        LlamaForCausalLM,
        Trainer,
        TrainingArguments,
        default_data_collator,
    )

    from codellama_hf.export.model_folder import complete_checkpoint_callback
    from codellama_hf.models import llama_config
    from codellama_hf.training.lineage import save_final

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    torch.manual_seed(0)
    if base is None:
        model = LlamaForCausalLM(llama_config("tiny", vocab_size=len(tokenizer), theta=1e6))
    else:
        model = AutoModelForCausalLM.from_pretrained(base)
    rows = torch.randint(3, len(tokenizer), (2, 16), generator=torch.Generator().manual_seed(0)).tolist()
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=1,
        per_device_train_batch_size=2,
        save_strategy="steps",
        save_steps=1,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_dict({"input_ids": rows, "labels": rows}),
        processing_class=tokenizer,
        data_collator=default_data_collator,
        callbacks=[complete_checkpoint_callback()],
    )
    trainer.train()
    return save_final(trainer, {"stage": "test", "rope_theta": 1e6})


@pytest.fixture(scope="module")
def folders(tmp_path_factory, llama2_dir, tiny_tokenizer_dir) -> dict[str, tuple[Path, Path]]:
    """kind -> (folder, the tokenizer.model it must carry)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from codellama_hf.adapters import AdapterArguments, apply_adapters, merge_and_save, save_adapter
    from codellama_hf.chat import CHAT_TEMPLATE
    from codellama_hf.convert import meta_to_hf
    from tests.test_convert import make_meta_checkpoint

    root = tmp_path_factory.mktemp("folders")
    meta = make_meta_checkpoint(root / "meta", llama2_dir / "tokenizer.model", vocab=32000, n_kv_heads=2)
    converted = meta_to_hf(meta, root / "converted", dtype="float32", extend_vocab=True, progress=False)
    python = meta_to_hf(meta, root / "converted-32000", dtype="float32", progress=False)
    stage = _train_and_save(root / "instruct", tiny_tokenizer_dir, chat_template=CHAT_TEMPLATE)

    options = AdapterArguments(use_peft=True, lora_r=4, lora_alpha=8, lora_dropout=0.0)
    peft_model = apply_adapters(AutoModelForCausalLM.from_pretrained(stage), options)
    adapter = save_adapter(peft_model, root / "adapter", AutoTokenizer.from_pretrained(stage))
    merged = merge_and_save(adapter, root / "merged")
    tiny_sp = tiny_tokenizer_dir / "tokenizer.model"
    return {
        "converted Meta checkpoint (32016)": (converted, converted / "tokenizer.model"),
        "converted Meta checkpoint (32000)": (python, llama2_dir / "tokenizer.model"),
        "stage output (instruct)": (stage, tiny_sp),
        "checkpoint": (stage / "checkpoint-1", tiny_sp),
        "adapter": (adapter, tiny_sp),
        "merged adapter": (merged, tiny_sp),
    }


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
