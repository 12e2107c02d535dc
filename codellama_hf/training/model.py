"""The model and tokenizer a stage starts from: continue a folder (or a random tiny model), set RoPE theta through
`rope_parameters` and check it in the rotary embedding, insist that embedding rows and tokenizer size agree, and add
LoRA / QLoRA adapters when asked (codellama_hf/adapters/)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from codellama_hf.adapters import apply_adapters, model_loading_kwargs
from codellama_hf.attention import resolve_attn_implementation
from codellama_hf.family import check_python_start
from codellama_hf.io import torch_dtype
from codellama_hf.models import assert_rope_theta, llama_config, set_rope_theta
from codellama_hf.training.config import ModelArguments, StageConfig
from codellama_hf.training.distributed import main_print as _print
from codellama_hf.training.distributed import process_state as _state
from codellama_hf.training.lineage import read_lineage
from codellama_hf.training.precision import uses_deepspeed, weights_dtype


def _is_model_folder(path: str | None) -> bool:
    return path is not None and (Path(path) / "config.json").is_file()


def tiny_tokenizer_dir(infilling: bool = True) -> Path:
    """The tiny preset's tokenizer, built once into the toolkit cache (deterministic, so every process agrees)."""
    from codellama_hf.assets import cache_dir
    from codellama_hf.tokenizer import build_tiny_tokenizer

    folder = cache_dir() / ("tiny-tokenizer" if infilling else "tiny-tokenizer-no-infilling")
    with _state().main_process_first():
        if not folder.is_dir():
            try:
                build_tiny_tokenizer(folder, infilling=infilling)
            except FileExistsError:  # another run built it meanwhile
                pass
    return folder


def _load_tokenizer(path):
    try:
        return AutoTokenizer.from_pretrained(path)
    except OSError as err:
        raise FileNotFoundError(f"tokenizer {path}: cannot load it ({err})") from None


def load_tokenizer_and_model(model_args: ModelArguments, config: StageConfig):
    """(tokenizer, model, base) for a stage, with theta set and checked and the vocabulary consistent.

    `base` describes the starting point for the lineage: the folder and its own lineage, or a random init.
    """
    source = model_args.model_name_or_path
    fresh = model_args.init_model_size is not None and not _is_model_folder(source)
    if fresh:
        if model_args.init_model_size != "tiny" and model_args.tokenizer_name_or_path is None:
            raise ValueError(f"init_model_size={model_args.init_model_size!r} needs tokenizer_name_or_path")
        if source is not None:
            _print(
                f"[yellow]{source} holds no model yet: starting from a random {model_args.init_model_size} "
                "model[/yellow]"
            )
        tokenizer_path = model_args.tokenizer_name_or_path or tiny_tokenizer_dir(model_args.infilling_pieces)
        tokenizer = _load_tokenizer(tokenizer_path)
        model_config = llama_config(model_args.init_model_size, vocab_size=len(tokenizer))
    elif source is None:
        raise ValueError("model_name_or_path is not set (and no init_model_size to start from a random model)")
    else:
        try:
            model_config = AutoConfig.from_pretrained(source)
        except OSError as err:
            raise FileNotFoundError(
                f"model_name_or_path={source}: not a model folder, nor a Hub model reachable from here ({err})"
            ) from None
        tokenizer_path = model_args.tokenizer_name_or_path or source
        tokenizer = _load_tokenizer(tokenizer_path)
    if config.stage == "python":  # the paper's Python branch: no infilling pieces, no FIM (family.py)
        lineage = None if fresh else read_lineage(source)
        check_python_start(tokenizer, model_config.vocab_size, source or "a random model", lineage)
    theta = model_args.rope_theta
    if theta is not None:
        if not theta > 0:
            raise ValueError(f"rope_theta={theta}: must be positive")
        if all(getattr(model_config, key, None) is None for key in ("rope_parameters", "rope_theta")):
            raise ValueError(
                f"rope_theta={theta:g} cannot take effect on {source}: its architecture "
                f"({model_config.model_type}) has no rotary position embedding"
            )
        set_rope_theta(model_config, theta, max_position_embeddings=model_args.max_position_embeddings)
    elif model_args.max_position_embeddings is not None:
        model_config.max_position_embeddings = model_args.max_position_embeddings
    if config.seq_len > getattr(model_config, "max_position_embeddings", config.seq_len):
        raise ValueError(
            f"seq_len={config.seq_len} exceeds the model's max_position_embeddings="
            f"{model_config.max_position_embeddings}; set max_position_embeddings"
        )
    model_config.use_cache = False  # packed rows: no cache, or documents would see each other (docs/stack-notes.md)

    attention = resolve_attn_implementation(model_args.attn_implementation, report=_print)
    dtype = weights_dtype(  # fp32 master weights outside DeepSpeed (which keeps its own)
        model_args.dtype,
        trains_all_weights=not model_args.use_peft,
        deepspeed=uses_deepspeed(config),
        bf16=config.bf16,
        fp16=config.fp16,
    )
    kwargs = {"dtype": torch_dtype(dtype, auto="auto"), "attn_implementation": attention}
    if model_args.quantized:
        if fresh:
            raise ValueError(
                f"load_in_{model_args.quantized} quantizes a pretrained base for QLoRA; a random "
                f"{model_args.init_model_size} model has none: set model_name_or_path"
            )
        kwargs.update(model_loading_kwargs(model_args, torch.bfloat16 if config.bf16 else torch.float32))
    if fresh:
        torch.manual_seed(config.seed)
        model = AutoModelForCausalLM.from_config(model_config, **kwargs)
        base = {"name_or_path": None, "random_init": model_args.init_model_size, "seed": config.seed, "lineage": None}
    else:
        model = AutoModelForCausalLM.from_pretrained(source, config=model_config, **kwargs)
        base = {"name_or_path": source, "random_init": None, "lineage": read_lineage(source)}

    if theta is not None:
        try:
            assert_rope_theta(model, theta)
        except (ValueError, RuntimeError) as err:
            raise ValueError(f"rope_theta={theta:g} cannot take effect on {source}: {err}") from None
    _check_vocabulary(model, tokenizer, model_args, source or "the new model", tokenizer_path)
    model = apply_adapters(model, model_args, gradient_checkpointing=config.gradient_checkpointing)
    base["tokenizer"] = str(tokenizer_path)
    return tokenizer, model, base


def _check_vocabulary(model, tokenizer, model_args: ModelArguments, model_name: str, tokenizer_name) -> None:
    """Embedding rows must equal the tokenizer's size: a mismatch silently trains unused rows or indexes past."""
    rows = model.get_input_embeddings().num_embeddings  # the module attribute survives ZeRO-3 partitioning
    if rows == len(tokenizer):
        return
    if model_args.resize_token_embeddings:
        _print(f"resizing embeddings {rows} -> {len(tokenizer)} (new rows at the mean embedding)")
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
        return
    raise ValueError(
        f"vocabulary mismatch: {model_name} has {rows} embedding rows but tokenizer {tokenizer_name} has "
        f"{len(tokenizer)} tokens; use the tokenizer the model was trained with (tokenizer_name_or_path), or set "
        "resize_token_embeddings: true to grow the embeddings (Llama 2 -> Code Llama adds the infilling pieces)"
    )


# ---------------------------------------------------------------------------------------------------------------
