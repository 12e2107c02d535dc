"""Using a saved adapter: reading it, attaching it to its base (after the fingerprint check), merging it.

The next stage continues from a plain model folder, so `merge_and_save` folds the adapter into the base: the base
is reloaded at full precision (merging into 4-bit weights would round the merged model to NF4), the theta and
context length the stage trained with are applied, and W + (alpha/r) B A is written with the tokenizer.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from codellama_hf.adapters.fingerprint import check_base
from codellama_hf.adapters.wrap import METADATA_FILE, adapter_size
from codellama_hf.export.model_folder import complete_model_folder
from codellama_hf.io import atomic_dir, refuse_existing, torch_dtype

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"


def read_adapter(folder: str | os.PathLike) -> tuple[dict, dict | None]:
    """(adapter_config.json, codellama_adapter.json or None) of an adapter folder, with clear errors."""
    folder = Path(folder)
    path = folder / ADAPTER_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: not a PEFT adapter folder (no {ADAPTER_CONFIG})")
    try:
        config = json.loads(path.read_text())
        metadata = json.loads((folder / METADATA_FILE).read_text()) if (folder / METADATA_FILE).is_file() else None
    except json.JSONDecodeError as err:
        raise ValueError(f"{folder}: unreadable adapter files ({err})") from None
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{path}: peft_type {config.get('peft_type')!r}; only LoRA adapters are supported")
    return config, metadata


def trained_config_overrides(metadata: dict | None) -> dict:
    """The config values an adapter was trained with that a base's saved config may lack (theta, positions)."""
    if not metadata:
        return {}
    trained = metadata["base_config"]
    theta = (trained.get("rope_parameters") or {}).get("rope_theta", trained.get("rope_theta"))
    return {
        "rope_theta": theta,
        "max_position_embeddings": trained.get("max_position_embeddings"),
        "vocab_size": trained.get("vocab_size"),
    }


def apply_trained_config(config, metadata: dict | None) -> None:
    """Set the theta and context length the adapter was trained with on a base config (before loading weights)."""
    from codellama_hf.models import set_rope_theta

    overrides = trained_config_overrides(metadata)
    if overrides.get("rope_theta") is not None:
        set_rope_theta(config, overrides["rope_theta"], max_position_embeddings=overrides["max_position_embeddings"])


def _grow_vocabulary(model, metadata: dict | None) -> None:
    """Stages that grew the vocabulary saved the new rows (trainable tokens or whole matrices): give the base the
    same size first. The values of the grown rows do not matter: the adapter's rows replace every one of them."""
    vocab = trained_config_overrides(metadata).get("vocab_size")
    if vocab and vocab != model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(vocab, mean_resizing=False)


def load_adapter(model, folder: str | os.PathLike, *, base_name: str | None = None, is_trainable: bool = False):
    """`model` with the LoRA adapter in `folder` attached (a peft.PeftModel), after checking it is its base."""
    from peft import PeftModel

    config, metadata = read_adapter(folder)
    base_name = base_name or getattr(model, "name_or_path", "the model")
    _grow_vocabulary(model, metadata)  # before the check: the fingerprint was taken after the stage grew it
    check_base(model, folder, metadata, base_name)
    try:
        return PeftModel.from_pretrained(model, str(folder), is_trainable=is_trainable)
    except RuntimeError as err:
        first = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), None)
        if first is None:
            raise
        trained_on = config.get("base_model_name_or_path")
        raise ValueError(
            f"adapter {folder} does not fit {base_name}: it was trained on {trained_on!r}, whose "
            f"layers have other shapes ({first})"
        ) from None


def merge_and_save(
    adapter_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    base_model: str | os.PathLike | None = None,
    dtype: str = "auto",
    overwrite: bool = False,
) -> Path:
    """Fold a LoRA adapter into its base and write a plain model folder (weights, config, tokenizer, lineage).

    base_model: defaults to the base recorded with the adapter. dtype: "auto" keeps the base checkpoint's dtype.
    The base is loaded unquantized even when the adapter was trained with QLoRA. The written config carries both
    rope keys; lineage.json of the adapter folder, if any, is carried over with an "adapter" entry.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    adapter_dir, output_dir = Path(adapter_dir), Path(output_dir)
    config, metadata = read_adapter(adapter_dir)
    base = str(base_model or (metadata or {}).get("base_model") or config.get("base_model_name_or_path") or "")
    if not base:
        raise ValueError(f"{adapter_dir}: the adapter records no base model; pass base_model=")
    refuse_existing(output_dir, overwrite)  # before the (slow) merge
    try:
        base_config = AutoConfig.from_pretrained(base)
    except OSError as err:
        raise FileNotFoundError(f"base model {base} of adapter {adapter_dir} cannot be loaded ({err})") from None
    apply_trained_config(base_config, metadata)
    model = AutoModelForCausalLM.from_pretrained(
        base, config=base_config, dtype=torch_dtype(dtype, auto="auto"), device_map="cpu"
    )
    merged = load_adapter(model, adapter_dir, base_name=base).merge_and_unload()

    with atomic_dir(output_dir, overwrite=overwrite) as tmp:
        merged.config.use_cache = True
        merged.save_pretrained(tmp)
        tokenizer_source = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else base
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
        tokenizer.save_pretrained(tmp)
        complete_model_folder(tmp, tokenizer=tokenizer)  # tokenizer.model, 4.x-readable files, stop ids
        lineage_path = adapter_dir / "lineage.json"
        if lineage_path.is_file():
            lineage = json.loads(lineage_path.read_text())
            lineage["adapter"] = {
                "merged_from": str(adapter_dir),
                "base_model": base,
                "quantization": (metadata or {}).get("quantization"),
                "lora": (metadata or {}).get("lora"),
                "size_bytes": adapter_size(adapter_dir),
            }
            (tmp / "lineage.json").write_text(json.dumps(lineage, indent=2, sort_keys=True) + "\n")
    logger.info("merged adapter %s into %s -> %s", adapter_dir, base, output_dir)
    return output_dir
