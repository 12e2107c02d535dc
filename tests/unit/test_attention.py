"""Packed documents stay apart on every attention backend at micro-batch > 1: logits of packed rows equal each
document run by itself (through sdpa) within 1e-5. flash-attention runs transformers' own integration on
plain-torch kernels (codellama_hf.attention.flash_attention_emulation); flex_attention runs PyTorch's kernel on CPU."""

import pytest
import torch
from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

from codellama_hf import attention
from codellama_hf.attention import (
    EMULATED_FLASH,
    check_packed_batch,
    flash_attention_emulation,
    packed_attention_inputs,
    prepare_collator,
    resolve_attn_implementation,
)
from codellama_hf.data.packing import PackedCollator
from codellama_hf.training.config import config_path
from tests.helpers.attention import _max_error_vs_documents_alone, _model, _packed_rows


@pytest.mark.parametrize("micro_batch", [2, 3])
def test_flash_varlen_path_keeps_documents_apart(tiny_tokenizer, micro_batch):
    rows = _packed_rows(tiny_tokenizer, seq_len=512, rows=micro_batch, doc_tokens=200)
    reference = _model(len(tiny_tokenizer), "sdpa")
    with flash_attention_emulation() as flash:
        model = _model(len(tiny_tokenizer), flash)
        collator = PackedCollator()
        prepare_collator(collator, rows, micro_batch, flash)
        batch = collator(rows)
        assert batch["cu_seq_lens_q"].dtype == torch.int32 and isinstance(batch["max_length_q"], int)
        assert _max_error_vs_documents_alone(model, reference, batch, rows) < 1e-5
        # The same rows with position_ids only: transformers runs the dense flash kernel over each whole row.
        leaky = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}
        assert _max_error_vs_documents_alone(model, reference, leaky, rows) > 1e-2
        with pytest.raises(ValueError, match="attend across packed documents"):
            check_packed_batch(leaky, flash)
        # The model's loss (what the Trainer optimises) equals sdpa's on the same packed batch.
        with torch.no_grad():
            loss = model(**batch).loss
            expected = reference(**{k: batch[k] for k in ("input_ids", "labels", "position_ids")}).loss
        assert loss.item() == pytest.approx(expected.item(), abs=1e-5)


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_dense_mask_backends_at_micro_batch_two(tiny_tokenizer, backend):
    rows = _packed_rows(tiny_tokenizer, seq_len=512, rows=2, doc_tokens=200)
    batch = PackedCollator(backend)(rows)
    model = _model(len(tiny_tokenizer), backend)
    assert _max_error_vs_documents_alone(model, _model(len(tiny_tokenizer), "sdpa"), batch, rows) < 1e-5


def test_varlen_offsets_match_transformers_reading_of_one_flattened_row():
    lengths, seq_len = [[3, 4], [5, 3], [8]], 8
    inputs = packed_attention_inputs(lengths, "flash_attention_2", seq_len=seq_len)
    assert inputs["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3, 0], [0, 1, 2, 3, 4, 0, 1, 2], list(range(8))]
    assert inputs["cu_seq_lens_q"].tolist() == [0, 3, 7, 8, 13, 16, 24]
    assert inputs["max_length_q"] == inputs["max_length_k"] == 8
    # transformers' own derivation for a single flattened row (DataCollatorWithFlattening's layout) agrees
    (cu_q, _), (longest, _) = prepare_fa_kwargs_from_position_ids(inputs["position_ids"].reshape(1, -1))
    assert torch.equal(cu_q, inputs["cu_seq_lens_q"]) and int(longest) == 8
    assert set(packed_attention_inputs(lengths, "sdpa", seq_len=seq_len)) == {"position_ids"}
    with pytest.raises(ValueError, match="do not fit"):
        packed_attention_inputs([[6, 3]], "sdpa", seq_len=8)
    with pytest.raises(ValueError, match="resolve"):
        packed_attention_inputs(lengths, "auto", seq_len=seq_len)


def test_packed_batches_that_would_mix_documents_are_refused():
    batch = packed_attention_inputs([[3, 5], [8]], "sdpa", seq_len=8)
    batch["input_ids"] = torch.zeros(2, 8, dtype=torch.long)
    check_packed_batch(batch, "sdpa")
    check_packed_batch({**batch, "input_ids": batch["input_ids"][:1]}, "flash_attention_2")  # one row: inferred
    with pytest.raises(ValueError, match="attention_mask"):
        check_packed_batch({**batch, "attention_mask": torch.ones(2, 8)}, "sdpa")
    with pytest.raises(ValueError, match="micro-batch 2"):
        check_packed_batch(batch, "flash_attention_2")


def test_auto_picks_by_machine_and_missing_backends_are_errors(monkeypatch):
    said = []
    assert resolve_attn_implementation("auto", report=said.append) == "sdpa"
    assert said == ["attn_implementation auto -> sdpa (no CUDA)"]
    assert resolve_attn_implementation("flex_attention") == "flex_attention"
    with pytest.raises(ValueError, match="CUDA GPUs only"):
        resolve_attn_implementation("flash_attention_2")
    with pytest.raises(ValueError, match="packed training supports"):
        resolve_attn_implementation("paged|eager")
    # The same decision on a CUDA machine, with and without the flash-attn package.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(attention, "_installed", lambda module: False)
    assert resolve_attn_implementation("auto", report=said.append) == "flex_attention"
    with pytest.raises(ValueError, match="flash_attn package is not installed"):
        resolve_attn_implementation("flash_attention_2")
    monkeypatch.setattr(attention, "_installed", lambda module: module == "flash_attn")
    assert resolve_attn_implementation("auto", report=said.append) == "flash_attention_2"
    assert resolve_attn_implementation("flash_attention_2") == "flash_attention_2"


def test_a_stage_with_a_backend_that_cannot_run_stops_before_training(tmp_path, capsys, monkeypatch):
    from codellama_hf.training import main

    out = tmp_path / "out"
    argv = ["code.py", "--output_dir", str(out), "--attn_implementation", "flash_attention_2"]
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        main("code", default_config=config_path("code"))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "code stage: error: attn_implementation=flash_attention_2: flash-attention runs on CUDA GPUs only and this "
        "machine has none; use auto (sdpa here) or sdpa"
    )
    assert not any(out.glob("checkpoint-*"))


def test_trainer_steps_on_the_flash_path_equal_sdpa(tiny_tokenizer, tmp_path):
    """The stage Trainer hands the collator's varlen offsets to the model: two optimizer steps at micro-batch 2 give
    the same weights as sdpa's from the same start."""
    from transformers import TrainingArguments

    from codellama_hf.training.trainer import StageTrainer

    rows = _packed_rows(tiny_tokenizer, seq_len=128, rows=8, doc_tokens=50)
    trained = {}
    with flash_attention_emulation() as flash:
        for backend in (flash, "sdpa"):
            model = _model(len(tiny_tokenizer), backend).train()
            args = TrainingArguments(
                output_dir=str(tmp_path / backend),
                per_device_train_batch_size=2,
                gradient_accumulation_steps=2,
                max_steps=2,
                learning_rate=1e-3,
                report_to="none",
                save_strategy="no",
                use_cpu=True,
                remove_unused_columns=False,
                train_sampling_strategy="sequential",
            )
            collator = PackedCollator()
            prepare_collator(collator, rows, 2, backend)
            trainer = StageTrainer(model=model, args=args, train_dataset=rows, data_collator=collator)
            trainer.train()
            trained[backend] = {n: p.detach().clone() for n, p in model.named_parameters()}
    moved = max(
        (trained["sdpa"][n] - p).abs().max().item() for n, p in _model(len(tiny_tokenizer), "sdpa").named_parameters()
    )
    assert moved > 1e-4  # the steps changed the weights
    assert max((trained[EMULATED_FLASH][n] - w).abs().max().item() for n, w in trained["sdpa"].items()) < 1e-5
