"""LoRA and QLoRA for every training stage: options, wrapping a model, attaching a saved adapter, merging it.

`AdapterArguments` is one more dataclass for a stage recipe (its field names are trl.ModelConfig's, so YAML recipes
read like TRL's). With `use_peft` the stage trains low-rank adapters on the attention and MLP projections instead of
every weight; with `load_in_4bit` the frozen base is stored in bitsandbytes NF4 (QLoRA) or with `load_in_8bit` in
int8. The next stage continues from a plain model folder, so `merge_and_save` folds the adapter into the base:
the base is reloaded at full precision (merging into 4-bit weights would round the merged model to NF4), the
theta and context length the stage trained with are applied, and W + (alpha/r) B A is written with the tokenizer.

When the stage grew the vocabulary (Llama 2 -> Code Llama's 16 infilling pieces, a BPE base + 4 FIM tokens), the new
rows of the input and output embeddings must be trained and saved too. By default only those rows are: peft's
`trainable_token_indices` (TrainableTokensModel) keeps a copy of the rows it trains, the adapter file holds them
(16 x 4096 x 2 matrices in bf16 = 256 KiB for 7B) instead of both whole matrices as `modules_to_save` (2 x 32016 x
4096 in bf16 = 500 MiB), and merging writes them back with `index_copy`. Tied embeddings (SmolLM2) share one copy.
`lora_modules_to_save: [embed_tokens, lm_head]` still trains the whole matrices when asked.

An adapter only makes sense on the exact base it was trained on: a 7B-Python adapter loads without a shape error
onto 7B base, and gives nonsense. `write_adapter_metadata` records a fingerprint of the base (sampled rows of the
embedding and output matrices, which LoRA never changes) in codellama_adapter.json; `load_adapter` and
`merge_and_save` compare it before applying the adapter. The comparison tolerates dtype changes (bf16 vs fp32) but
not different weights.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from codellama_hf.export.model_folder import complete_model_folder
from codellama_hf.io import atomic_dir, refuse_existing, torch_dtype, write_json

logger = logging.getLogger(__name__)

METADATA_FILE = "codellama_adapter.json"
ADAPTER_CONFIG = "adapter_config.json"
QUANT_TYPES = ("nf4", "fp4")
_FINGERPRINT_ROWS, _FINGERPRINT_COLUMNS = 16, 256
_FINGERPRINT_RTOL = 1 / 64  # bf16 keeps 8 significant bits (relative rounding <= 1/512); trained weights move more


@dataclass
class AdapterArguments:
    """LoRA / QLoRA options of a training stage (names as in trl.ModelConfig)."""

    use_peft: bool = field(
        default=False, metadata={"help": "Train LoRA adapters instead of all weights (the base stays frozen)."}
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha: the update is scaled by alpha/r."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Modules to adapt; default: every linear layer of the decoder (q/k/v/o, gate/up/down), "
            "as in the QLoRA paper. The output layer is never adapted."
        },
    )
    lora_modules_to_save: list[str] | None = field(
        default=None,
        metadata={
            "help": "Modules trained in full beside the adapters. When the vocabulary grew (Llama 2 -> Code "
            "Llama's infilling pieces) only the new embedding rows are trained and saved by default; "
            "[embed_tokens, lm_head] trains the whole matrices instead."
        },
    )
    use_rslora: bool = field(default=False, metadata={"help": "Rank-stabilised scaling alpha/sqrt(r)."})
    load_in_4bit: bool = field(
        default=False, metadata={"help": "QLoRA: keep the frozen base in bitsandbytes 4-bit (needs use_peft)."}
    )
    load_in_8bit: bool = field(
        default=False, metadata={"help": "Keep the frozen base in bitsandbytes int8 (needs use_peft)."}
    )
    bnb_4bit_quant_type: str = field(
        default="nf4", metadata={"help": "4-bit data type: nf4 (QLoRA) or fp4.", "choices": list(QUANT_TYPES)}
    )
    use_bnb_nested_quant: bool = field(
        default=True, metadata={"help": "Quantize the 4-bit scales too (QLoRA's double quantization)."}
    )
    bnb_4bit_quant_storage: str | None = field(
        default=None,
        metadata={
            "help": "Storage dtype of 4-bit weights; set it to the compute dtype (bfloat16) to shard QLoRA "
            "with FSDP or DeepSpeed ZeRO-3."
        },
    )
    merge_adapter: bool = field(
        default=True,
        metadata={
            "help": "After training, write merged full weights to output_dir (the adapter itself goes to "
            "output_dir/adapter), so the next stage continues from a plain model folder."
        },
    )

    def __post_init__(self):
        if self.load_in_4bit and self.load_in_8bit:
            raise ValueError("load_in_4bit and load_in_8bit are exclusive: choose one quantization of the base")
        if self.quantized and not self.use_peft:
            raise ValueError(
                "a quantized base cannot be trained directly: load_in_4bit/load_in_8bit need use_peft "
                "(QLoRA trains adapters on top of the frozen quantized weights)"
            )
        if self.bnb_4bit_quant_type not in QUANT_TYPES:
            raise ValueError(f"bnb_4bit_quant_type={self.bnb_4bit_quant_type!r}: choose one of {QUANT_TYPES}")
        if not (isinstance(self.lora_r, int) and self.lora_r > 0):
            raise ValueError(f"lora_r={self.lora_r!r}: must be a positive integer")
        if not self.lora_alpha > 0:
            raise ValueError(f"lora_alpha={self.lora_alpha!r}: must be positive")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout={self.lora_dropout!r}: must be in [0, 1)")

    @property
    def quantized(self) -> str | None:
        return "4bit" if self.load_in_4bit else "8bit" if self.load_in_8bit else None

    def lora_config(self, trainable_token_indices: dict[str, list[int]] | list[int] | None = None):
        """peft.LoraConfig for these options (None without use_peft); rows to train given by apply_adapters."""
        if not self.use_peft:
            return None
        from peft import LoraConfig

        return LoraConfig(
            task_type="CAUSAL_LM",
            r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=self.lora_target_modules or "all-linear",
            modules_to_save=self.lora_modules_to_save,
            trainable_token_indices=trainable_token_indices,
            use_rslora=self.use_rslora,
            bias="none",
        )

    def quantization_config(self, compute_dtype="bfloat16"):
        """transformers.BitsAndBytesConfig for the base (None when not quantized)."""
        if not self.quantized:
            return None
        import torch
        from transformers import BitsAndBytesConfig

        from codellama_hf.console import show_quantization_notices

        show_quantization_notices()

        if self.load_in_8bit:
            return BitsAndBytesConfig(load_in_8bit=True)
        dtype = torch_dtype(compute_dtype)
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=self.bnb_4bit_quant_type,
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=self.use_bnb_nested_quant,
            bnb_4bit_quant_storage=self.bnb_4bit_quant_storage or torch.uint8,
        )


def model_loading_kwargs(options: AdapterArguments, compute_dtype="bfloat16") -> dict:
    """Extra `from_pretrained` arguments for a quantized base: the bnb config and where each process puts it.

    bitsandbytes places weights at load time, so every data-parallel process loads onto its own device; under
    DeepSpeed ZeRO-3 the weights are partitioned instead and no device map may be given.
    """
    if not options.quantized:
        return {}
    import torch
    from transformers.integrations import is_deepspeed_zero3_enabled

    kwargs = {"quantization_config": options.quantization_config(compute_dtype)}
    if not is_deepspeed_zero3_enabled():
        if torch.cuda.is_available():
            from accelerate import PartialState

            kwargs["device_map"] = {"": PartialState().local_process_index}
        else:
            kwargs["device_map"] = {"": "cpu"}
    return kwargs


def _quantization_of(model) -> str | None:
    if getattr(model, "is_loaded_in_4bit", False):
        return "4bit"
    if getattr(model, "is_loaded_in_8bit", False):
        return "8bit"
    return None


# ---------------------------------------------------------------------------------------------------------------
# Fingerprint of a base model
# ---------------------------------------------------------------------------------------------------------------


def _sample_rows(weight, rows: list[int]):
    """Rows of a (possibly ZeRO-3 partitioned) matrix, first columns only, as float32 on the CPU."""
    import contextlib

    import torch

    gather = contextlib.nullcontext()
    if hasattr(weight, "ds_id"):
        import deepspeed

        gather = deepspeed.zero.GatheredParameters([weight], modifier_rank=None)
    with gather, torch.no_grad():
        return weight[rows, :_FINGERPRINT_COLUMNS].detach().float().cpu()


def base_fingerprint(model) -> dict:
    """Sampled rows of the input and output embeddings (bf16, base64): what identifies the base of an adapter."""
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    matrices = {"embed": base.get_input_embeddings(), "output": base.get_output_embeddings()}
    vocab = matrices["embed"].num_embeddings
    # Rows from the first 90% of the vocabulary: grown vocabularies get their new rows at the end.
    rows = sorted({int(i) for i in torch.linspace(0, max(0, int(0.9 * vocab) - 1), _FINGERPRINT_ROWS)})
    out = {"vocab_size": vocab, "hidden_size": base.config.hidden_size, "rows": rows}
    for name, module in matrices.items():
        if module is None:
            continue
        sample = _sample_rows(module.weight, rows).to(torch.bfloat16)
        out[name] = base64.b64encode(sample.view(torch.int16).numpy().tobytes()).decode()
    return out


def _decode(sample: str, rows: int):
    import numpy as np
    import torch

    values = torch.from_numpy(np.frombuffer(base64.b64decode(sample), dtype=np.int16).copy())
    return values.view(torch.bfloat16).float().reshape(rows, -1)


def fingerprint_mismatch(expected: dict, model) -> str | None:
    """Why `model` is not the base `expected` describes, or None when it is."""
    import torch

    got = base_fingerprint(model)
    for key in ("vocab_size", "hidden_size"):
        if got[key] != expected[key]:
            return f"{key} {got[key]} instead of {expected[key]}"
    if got["rows"] != expected["rows"]:
        return "a different vocabulary layout"
    for name in ("embed", "output"):
        if name not in expected or name not in got:
            continue
        a, b = _decode(expected[name], len(expected["rows"])), _decode(got[name], len(got["rows"]))
        close = torch.isclose(a, b, rtol=_FINGERPRINT_RTOL, atol=1e-6 * float(a.abs().max()))
        share = float(close.float().mean())
        if share < 0.99:
            which = "input" if name == "embed" else "output"
            return f"{which} embeddings that differ ({100 * share:.0f}% of the sampled values match)"
    return None


# ---------------------------------------------------------------------------------------------------------------
# Training: wrap a model, record its base
# ---------------------------------------------------------------------------------------------------------------


def _embedding_names(model) -> tuple[str, str | None]:
    """Last name components of the input and output embedding modules (embed_tokens, lm_head for Llama)."""
    embed, output = model.get_input_embeddings(), model.get_output_embeddings()
    names = {id(module): name.rsplit(".", 1)[-1] for name, module in model.named_modules()}
    return names[id(embed)], names.get(id(output)) if output is not None else None


def grown_rows(model) -> list[int]:
    """Embedding rows the model has beyond its saved checkpoint's vocabulary (empty when it did not grow)."""
    from transformers import AutoConfig

    saved = AutoConfig.from_pretrained(model.name_or_path).vocab_size
    rows = model.get_input_embeddings().num_embeddings  # the module attribute survives ZeRO-3 partitioning
    return list(range(saved, rows))


def new_row_tokens(model, options: AdapterArguments) -> dict[str, list[int]] | None:
    """peft `trainable_token_indices` for the rows the vocabulary grew by, or None (no growth / whole matrices).

    The new rows must be trained and saved with the adapter, else they stay at their initial values and are lost
    on reload. Tied embeddings (SmolLM2) are one matrix: peft ties lm_head to the embedding's trained rows.
    """
    new = grown_rows(model)
    if not new:
        return None
    embed, output = _embedding_names(model)
    whole = set(options.lora_modules_to_save or [])
    tied = output is None or bool(getattr(model.config, "tie_word_embeddings", False))  # as peft decides
    needed = {embed} if tied else {embed, output}
    if needed <= whole:
        return None  # the whole matrices train, as asked
    if whole & needed:
        raise ValueError(
            f"the vocabulary grew from {new[0]} to {new[-1] + 1} rows and lora_modules_to_save trains "
            f"{sorted(whole & needed)} in full but not {sorted(needed - whole)}: list both, or neither (then only "
            "the new rows are trained, with peft's trainable_token_indices)"
        )
    return {embed: new} if tied else {embed: new, output: new}


def _check_zero3_tokens(tokens) -> None:
    """peft gathers trainable rows under ZeRO-3 through a CUDA broadcast (TrainableTokensLayer); say so on CPU."""
    import torch
    from transformers.integrations import is_deepspeed_zero3_enabled

    if tokens and is_deepspeed_zero3_enabled() and not torch.cuda.is_available():
        raise ValueError(
            "the new embedding rows are trained with peft's trainable_token_indices, which under DeepSpeed ZeRO-3 "
            "needs CUDA (peft broadcasts the rows on a GPU); on CPU set lora_modules_to_save: [embed_tokens, "
            "lm_head] to train the whole matrices, or train without ZeRO-3"
        )


def _save_without_base_embeddings(peft_model) -> None:
    """Make every save of this model (stage end, Trainer checkpoints) write only what was trained.

    peft's save_embedding_layers="auto" adds the full embedding and output matrices whenever the vocabulary differs
    from the base checkpoint's: next to trainable_token_indices' rows, and with modules_to_save even twice more
    (the frozen original and the base weight beside the trained copy: 6 matrices, 1.6 GB in bf16 for 7B). Loading
    grows the base first (load_adapter) and the trained rows or matrices replace every new row, so none is needed.
    """
    import functools

    save = peft_model.save_pretrained
    peft_model.save_pretrained = functools.partial(save, save_embedding_layers=False)


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
    _check_zero3_tokens(tokens)
    fingerprint = base_fingerprint(model)
    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        model.enable_input_require_grads()  # checkpointed blocks need an input that requires grad
    peft_model = get_peft_model(model, options.lora_config(tokens))
    if grew:
        _save_without_base_embeddings(peft_model)
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


def trained_rows(peft_config) -> dict[str, list[int]]:
    """{module: [first, last]} of the embedding rows trained with trainable_token_indices (empty when none)."""
    indices = getattr(peft_config, "trainable_token_indices", None) or {}
    if isinstance(indices, list):
        indices = {"embed_tokens": indices}
    return {name: [min(ids), max(ids)] for name, ids in sorted(indices.items()) if ids}


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


# ---------------------------------------------------------------------------------------------------------------
# Using a saved adapter
# ---------------------------------------------------------------------------------------------------------------


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


def check_base(model, folder: str | os.PathLike, metadata: dict | None, base_name: str) -> None:
    """Refuse an adapter whose recorded base is not `model` (see the module docstring)."""
    if metadata is None:
        return
    why = fingerprint_mismatch(metadata["fingerprint"], model)
    if why:
        raise ValueError(
            f"adapter {folder} was trained on another base model ({metadata.get('base_model')}); {base_name} has "
            f"{why}. Load the adapter with the model it was trained on."
        )


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
