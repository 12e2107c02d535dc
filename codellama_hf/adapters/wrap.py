"""Wrapping a model for LoRA / QLoRA training, and saving the adapter with a record of its base.

`write_adapter_metadata` writes codellama_adapter.json beside peft's files: the base, its fingerprint
(fingerprint.py) and the config the stage trained under, which `load_adapter` and `merge_and_save` use.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from codellama_hf.adapters.fingerprint import base_fingerprint
from codellama_hf.adapters.new_rows import (
    check_zero3_tokens,
    grown_rows,
    new_row_tokens,
    save_without_base_embeddings,
    trained_rows,
)
from codellama_hf.adapters.options import AdapterArguments
from codellama_hf.export.model_folder import complete_model_folder
from codellama_hf.io import write_json

logger = logging.getLogger(__name__)

METADATA_FILE = "codellama_adapter.json"


def _quantization_of(model) -> str | None:
    if getattr(model, "is_loaded_in_4bit", False):
        return "4bit"
    if getattr(model, "is_loaded_in_8bit", False):
        return "8bit"
    return None


def apply_adapters(model, options: AdapterArguments, *, gradient_checkpointing: bool = False):
    """Wrap `model` with trainable LoRA adapters (QLoRA when it was loaded quantized); unchanged without use_peft."""
    if not options.use_peft:
        return model
    from peft import get_peft_model, prepare_model_for_kbit_training

    if not getattr(model, "name_or_path", None):
        raise ValueError(
            "LoRA trains a low-rank update of a pretrained model, but this model was initialised "
            "at random (no name_or_path to merge into later); train it fully with use_peft: false"
        )
    quantized = _quantization_of(model)
    if options.quantized and quantized != options.quantized:
        raise ValueError(
            f"load_in_{options.quantized} is set but the model was loaded "
            f"{'as ' + quantized if quantized else 'unquantized'}: load it with "
            "model_loading_kwargs(options)"
        )
    grew = bool(grown_rows(model))
    tokens = new_row_tokens(model, options)  # rows already initialised (mean embedding) by the stage
    check_zero3_tokens(tokens)
    fingerprint = base_fingerprint(model)
    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        model.enable_input_require_grads()  # checkpointed blocks need an input that requires grad
    peft_model = get_peft_model(model, options.lora_config(tokens))
    if grew:
        save_without_base_embeddings(peft_model)
    peft_model.codellama_base = {
        "base_model": model.name_or_path,
        "fingerprint": fingerprint,
        "quantization": quantized,
    }
    trainable, total = peft_model.get_nb_trainable_parameters()
    logger.info(
        "LoRA r=%d alpha=%g on %s%s%s: %s of %s parameters trainable",
        options.lora_r,
        options.lora_alpha,
        peft_model.peft_config["default"].target_modules,
        f", {quantized} base" if quantized else "",
        f", new rows {next(iter(tokens.values()))[0]}+ of {sorted(tokens)}" if tokens else "",
        f"{trainable:,}",
        f"{total:,}",
    )
    return peft_model


def write_adapter_metadata(model, folder: str | os.PathLike) -> Path:
    """Write codellama_adapter.json beside a saved adapter: its base, the base's fingerprint and trained config.

    The config is the one the adapter was trained under (e.g. LCFT's theta 1e6 and 16k positions), which differs
    from the config saved with the base; merging and loading apply it.
    """
    info = getattr(model, "codellama_base", None)
    if info is None:
        raise ValueError("this model was not wrapped by codellama_hf.adapters.apply_adapters; no base to record")
    config = model.get_base_model().config.to_dict()
    config.pop("quantization_config", None)
    peft_config = model.peft_config["default"]
    metadata = {
        "format": 1,
        **info,
        "base_config": config,
        "lora": {
            "r": peft_config.r,
            "alpha": peft_config.lora_alpha,
            "dropout": peft_config.lora_dropout,
            "target_modules": sorted(peft_config.target_modules),
            "use_rslora": peft_config.use_rslora,
            "modules_to_save": sorted(peft_config.modules_to_save or []),
            "trained_rows": trained_rows(peft_config),
            "tied_embeddings": bool(config.get("tie_word_embeddings")),
        },
    }
    return write_json(Path(folder) / METADATA_FILE, metadata)


def adapter_size(folder: str | os.PathLike) -> int:
    """Bytes of the adapter's weights on disk (adapter_model.safetensors / .bin)."""
    return sum(p.stat().st_size for p in Path(folder).glob("adapter_model*") if p.is_file())


def save_adapter(model, folder: str | os.PathLike, tokenizer=None) -> Path:
    """Save a LoRA adapter (PEFT files + codellama_adapter.json, and the tokenizer when given)."""
    folder = Path(folder)
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
        complete_model_folder(folder, tokenizer=tokenizer)
    write_adapter_metadata(model, folder)
    return folder
