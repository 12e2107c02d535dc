"""Shared by the export_folder tests: fixtures and helpers."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest
import torch


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
    from tests.helpers.convert import make_meta_checkpoint

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
