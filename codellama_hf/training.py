"""Running a training stage: model and tokenizer, packed data, the Trainer, resuming, saving and lineage.

`run_stage` is the whole job, in the numbered sections a recipe script would have; the recipes under recipes/
call it with their stage name. The pieces are public so that other stages (instruct, LoRA variants) can reuse
them with a different data builder:

- `load_tokenizer_and_model`: continue from a folder (or start a random tiny model), set RoPE theta through
  `rope_parameters` and check it in the rotary embedding, insist that embedding and tokenizer sizes agree;
- `build_train_dataset`: documents -> FIM -> packed rows, exactly as many as the run needs, stored under
  output_dir/packed/ so every process and every resume reads the same rows;
- `StageTrainer`: transformers' Trainer whose cosine ends *on* the last update, logging FIM counts;
- `resume_checkpoint` (newest complete checkpoint, same settings), `save_final` (a plain HF folder, also after
  ZeRO-3), `lineage_record` / `read_lineage` (lineage.json, which model cards read).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback

import codellama_hf
from codellama_hf import speed
from codellama_hf.adapters import (
    AdapterArguments,
    apply_adapters,
    merge_and_save,
    model_loading_kwargs,
    write_adapter_metadata,
)
from codellama_hf.distributed import (
    OptimizerGroupsMixin,
    check_deepspeed_config,
    gather_full_state_for_final_save,
    uses_deepspeed,
    weights_dtype,
)
from codellama_hf.export.model_folder import complete_checkpoint_callback, complete_model_folder
from codellama_hf.io import atomic_dir, torch_dtype, write_json
from codellama_hf.models import (
    assert_rope_theta,
    effective_rope_theta,
    llama_config,
    rope_theta,
    set_rope_theta,
)
from codellama_hf.stages import DataArguments, ModelArguments, StageConfig, parse_stage_config

logger = logging.getLogger(__name__)

LINEAGE_FILE = "lineage.json"  # written last into a finished model folder: its presence marks completion
SIGNATURE_FILE = "run_signature.json"  # written into each complete checkpoint
PACKED_DIR = "packed"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_RUN_ARTIFACTS = ("lineage.json", "training_args.bin", "trainer_state.json", "runs", PACKED_DIR)


# ---------------------------------------------------------------------------------------------------------------
# 1. Printing from the main process
# ---------------------------------------------------------------------------------------------------------------


def _state():
    from accelerate import PartialState

    return PartialState()


def _print(*args) -> None:
    """Print once, from the main process."""
    if _state().is_main_process:
        from rich.console import Console

        Console(highlight=False).print(*args, soft_wrap=all(isinstance(a, str) for a in args))  # no wrap in logs


# ---------------------------------------------------------------------------------------------------------------
# 2. Tokenizer and model
# ---------------------------------------------------------------------------------------------------------------


def _is_model_folder(path: str | None) -> bool:
    return path is not None and (Path(path) / "config.json").is_file()


def tiny_tokenizer_dir() -> Path:
    """The tiny preset's tokenizer, built once into the toolkit cache (deterministic, so every process agrees)."""
    from codellama_hf.assets import cache_dir
    from codellama_hf.tokenizer import build_tiny_tokenizer

    folder = cache_dir() / "tiny-tokenizer"
    with _state().main_process_first():
        if not folder.is_dir():
            try:
                build_tiny_tokenizer(folder)
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
        tokenizer_path = model_args.tokenizer_name_or_path or tiny_tokenizer_dir()
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

    from codellama_hf.attention import resolve_attn_implementation

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
# 3. Data
# ---------------------------------------------------------------------------------------------------------------


def load_documents(data_args: DataArguments, seed: int):
    """The stage's documents: a mixture (preset or YAML) or plain sources, as a datasets (Iterable)Dataset."""
    from codellama_hf.corpus import load_mixture, read_sources

    if data_args.dataset_mixture is not None:
        sources = data_args.mixture_sources_dict()
        return load_mixture(
            data_args.dataset_mixture,
            data_args.dataset_split,
            seed=seed,
            streaming=data_args.streaming,
            sources=sources,
        )
    return read_sources(data_args.dataset_sources, streaming=data_args.streaming)


def _fim_config(data_args: DataArguments, tokenizer, seed: int):
    from codellama_hf.fim import FIMConfig
    from codellama_hf.tokenizer import supports_infilling

    if data_args.fim_rate == 0:
        return None
    if not supports_infilling(tokenizer):
        raise ValueError(
            f"fim_rate={data_args.fim_rate} needs a tokenizer with the infilling pieces (<PRE> <SUF> "
            "<MID> <EOT>); build one with `codellama-hf tokenizer --llama2 ... --out ...` or set "
            "fim_rate: 0"
        )
    return FIMConfig(rate=data_args.fim_rate, spm_rate=data_args.fim_spm_rate, seed=seed)


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


CHARS_PER_TOKEN = 4  # generous for code under Llama's tokenizer (about 3.2): document budgets rarely fall short


def _pack_epoch(documents, tokenizer, data_args: DataArguments, seq_len: int, fim, seed: int, epoch: int, rows: int):
    """Up to `rows` packed rows from one pass over the documents, shuffled for this epoch.

    Only a prefix of the shuffled documents big enough for `rows` is tokenized (doubled until it is), the prefix
    is packed completely, and the rows are shuffled before taking `rows`: best-fit emits a window's longest
    pieces first, so taking the first rows unshuffled would favour long documents.
    """
    from codellama_hf.packing import pack_dataset

    shuffled = documents.shuffle(seed=seed + epoch)
    count, chars = 0, 0
    for document in shuffled.select_columns([data_args.text_column]).to_iterable_dataset():
        count += 1
        chars += len(document[data_args.text_column] or "")
        if chars >= rows * seq_len * CHARS_PER_TOKEN:
            break
    while True:
        prefix = shuffled.select(range(count)).flatten_indices(keep_in_memory=True)
        packed = pack_dataset(
            prefix,
            tokenizer,
            seq_len=seq_len,
            fim=fim,
            epoch=epoch,
            text_column=data_args.text_column,
            buffer_documents=data_args.packing_buffer,
        )
        if len(packed) >= rows or count == len(shuffled):
            break
        count = min(2 * count, len(shuffled))
    packed = packed.shuffle(seed=seed + epoch).flatten_indices(keep_in_memory=True)
    return packed.select(range(min(rows, len(packed)))).select_columns(["input_ids", "seq_lengths"])


def _describe_data(data_args: DataArguments) -> str:
    if data_args.dataset_mixture is not None:
        return f"mixture {data_args.dataset_mixture}"
    return "sources " + ", ".join(map(str, data_args.dataset_sources))


def build_train_dataset(data_args: DataArguments, config: StageConfig, tokenizer):
    """Packed training rows and a description of the data for the lineage.

    Map-style corpora are packed once, by the main process, into exactly max_steps x sequences_per_step rows,
    stored under output_dir/packed/<fingerprint>; the other processes and any resumed run load the same rows, so
    the Trainer's own skip of consumed batches restores the exact data position, FIM decisions included. Streaming
    corpora are packed on the fly (a resume then replays the stream to the checkpoint).
    """
    import datasets

    from codellama_hf.packing import pack_dataset

    seed = config.data_seed if config.data_seed is not None else config.seed
    fim = _fim_config(data_args, tokenizer, seed)
    info = {
        "mixture": data_args.dataset_mixture,
        "sources": data_args.dataset_sources,
        "mixture_sources": data_args.mixture_sources_dict(),
        "split": data_args.dataset_split,
        "streaming": data_args.streaming,
        "seq_len": config.seq_len,
        "fim": asdict(fim) if fim else None,
    }
    if data_args.dataset_mixture is not None:
        from codellama_hf.corpus import get_mixture

        info["mixture_weights"] = get_mixture(data_args.dataset_mixture).weights
    with config.main_process_first(desc="reading the corpus"):
        documents = load_documents(data_args, seed)
    if isinstance(documents, datasets.IterableDataset):
        stream = documents.shuffle(seed=seed, buffer_size=10_000)
        packed = pack_dataset(
            stream,
            tokenizer,
            seq_len=config.seq_len,
            fim=fim,
            text_column=data_args.text_column,
            buffer_documents=data_args.packing_buffer,
        )
        return packed.select_columns(["input_ids", "seq_lengths"]), info
    if len(documents) == 0:
        raise ValueError(f"the corpus is empty ({_describe_data(data_args)})")
    if data_args.text_column not in documents.column_names:
        raise ValueError(
            f"{_describe_data(data_args)} has no {data_args.text_column!r} column "
            f"(columns: {documents.column_names}); set text_column"
        )

    rows = config.plan.max_steps * config.plan.sequences_per_step
    # Keyed by the settings, not the corpus contents: within an output_dir the packed rows are the run's frozen
    # data (a resume must read them even if the source files changed since), and a new run starts a new folder.
    key = _digest(
        {
            "data": asdict(data_args),
            "tokenizer": tokenizer.backend_tokenizer.to_str(),
            "seq_len": config.seq_len,
            "rows": rows,
            "seed": seed,
        }
    )
    folder = Path(config.output_dir) / PACKED_DIR / key
    with config.main_process_first(desc="packing the training data"):
        if not (folder / "rows.json").is_file():
            parts, made = [], 0
            while made < rows:
                part = _pack_epoch(documents, tokenizer, data_args, config.seq_len, fim, seed, len(parts), rows - made)
                if len(part) == 0:
                    raise ValueError(
                        f"the corpus gives no training tokens ({_describe_data(data_args)}): its "
                        "documents are empty after tokenization"
                    )
                parts.append(part)
                made += len(part)
            with atomic_dir(folder, overwrite=True) as tmp:
                datasets.concatenate_datasets(parts).save_to_disk(str(tmp / "rows"))
                (tmp / "rows.json").write_text(json.dumps({"rows": made, "epochs": len(parts)}))
    packed = datasets.load_from_disk(str(folder / "rows"))
    info.update(json.loads((folder / "rows.json").read_text()), documents=len(documents), packed_dir=str(folder))
    return packed, info


# ---------------------------------------------------------------------------------------------------------------
# 4. Trainer
# ---------------------------------------------------------------------------------------------------------------


class StageTrainer(OptimizerGroupsMixin, Trainer):
    """transformers' Trainer with the paper's schedule end point and FIM counts in the logs.

    Trainer's schedules reach their floor one step after the last update, so the final learning rate the paper
    specifies (peak/30) would never be applied; here the decay ends on the last update. With FIM on, each logged
    step also reports how many PSM and SPM documents it trained on (summed over processes), which makes the FIM
    decisions visible and comparable across an interrupted and a resumed run.
    """

    def __init__(self, *args, infill=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.infill = infill
        self._fim_counts = torch.zeros(2, dtype=torch.long, device=self.args.device) if infill else None

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        return super().create_scheduler(max(1, num_training_steps - 1), optimizer)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self._fim_counts is not None:
            ids = inputs["input_ids"]
            starts = ids == self.infill.prefix
            spm = (starts[:, :-1] & (ids[:, 1:] == self.infill.suffix)).sum()
            self._fim_counts += torch.stack([starts.sum() - spm, spm]).to(self._fim_counts.device)
        return super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )

    def log(self, logs: dict, start_time: float | None = None) -> None:
        if self._fim_counts is not None and "loss" in logs:  # every process logs here, so reducing is safe
            psm, spm = self.accelerator.reduce(self._fim_counts.clone(), reduction="sum").tolist()
            logs["fim_psm"], logs["fim_spm"] = psm, spm
            self._fim_counts.zero_()
        super().log(logs, start_time)


class RunSignatureCallback(TrainerCallback):
    """Write what a resume must match (plan, data, seeds) into each checkpoint, after the checkpoint is complete."""

    def __init__(self, signature: dict):
        self.signature = signature

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                write_json(folder / SIGNATURE_FILE, self.signature, sort_keys=True)


def run_signature(config: StageConfig, data_args: DataArguments) -> dict:
    """The settings that fix the sequence of batches; a checkpoint resumes only under the same ones."""
    plan = config.plan
    return {
        "stage": config.stage,
        "world_size": plan.world_size,
        "micro_batch": plan.micro_batch,
        "grad_accum": plan.grad_accum,
        "seq_len": plan.seq_len,
        "seed": config.seed,
        "data_seed": config.data_seed,
        "data": asdict(data_args),
    }


def check_zero3_saves_weights(deepspeed_config: dict) -> None:
    """ZeRO-3 without 16-bit gathering on save writes a model folder with no weights (DeepSpeed's config docs;
    docs/stack-notes.md): refuse."""
    zero = deepspeed_config.get("zero_optimization", {})
    if zero.get("stage") == 3 and not zero.get("stage3_gather_16bit_weights_on_model_save", False):
        raise ValueError(
            "the DeepSpeed config runs ZeRO-3 without stage3_gather_16bit_weights_on_model_save: true, "
            "so the final model would be saved without weights; set it (deepspeed_configs/zero3.json "
            "does)"
        )


# ---------------------------------------------------------------------------------------------------------------
# 5. Output folder and resuming
# ---------------------------------------------------------------------------------------------------------------


def checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """checkpoint-N folders in step order."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint that was completely written (a run killed mid-save leaves a partial one)."""
    for folder in reversed(checkpoints(output_dir)):
        if (folder / "trainer_state.json").is_file() and (folder / SIGNATURE_FILE).is_file():
            return folder
        logger.warning("skipping incomplete checkpoint %s", folder)
    return None


def prepare_output_dir(config: StageConfig) -> None:
    """Refuse to mix a new run into an earlier one's folder unless resuming or explicitly overwriting."""
    out = Path(config.output_dir)
    earlier = out.is_dir() and (bool(checkpoints(out)) or any((out / name).exists() for name in _RUN_ARTIFACTS))
    state = _state()
    state.wait_for_everyone()  # every process has looked before anything is deleted
    if not earlier or config.resume_from_checkpoint is not None:
        return
    if not config.overwrite_output_dir:
        raise FileExistsError(
            f"output_dir {out} already holds a run; pass --resume_from_checkpoint to continue it "
            "or --overwrite_output_dir true to start over"
        )
    if state.is_main_process:
        _print(f"[yellow]overwriting the earlier run in {out}[/yellow]")
        shutil.rmtree(out)
    state.wait_for_everyone()


def resume_checkpoint(config: StageConfig, signature: dict) -> str | None:
    """The checkpoint to resume from ('latest' -> newest complete one), checked against this run's signature."""
    requested = config.resume_from_checkpoint
    if requested is None:
        return None
    if requested.lower() in ("latest", "true"):
        found = latest_checkpoint(config.output_dir)
        if found is None:
            _print(f"no checkpoint in {config.output_dir} yet: starting from the beginning")
            return None
    else:
        found = Path(requested)
        if not (found / "trainer_state.json").is_file():
            raise FileNotFoundError(
                f"resume_from_checkpoint={requested}: not a checkpoint folder (no trainer_state.json)"
            )
    saved_path = found / SIGNATURE_FILE
    if saved_path.is_file():
        saved = json.loads(saved_path.read_text())
        changed = sorted(k for k in set(saved) | set(signature) if saved.get(k) != _jsonable(signature).get(k))
        if changed:
            detail = "; ".join(f"{k}: {saved.get(k)!r} -> {_jsonable(signature).get(k)!r}" for k in changed)
            raise ValueError(
                f"cannot resume from {found}: it was written under different settings ({detail}). "
                "Resume with the same processes, batch and data, or start a new output_dir"
            )
    _print(f"resuming from {found}")
    return str(found)


# ---------------------------------------------------------------------------------------------------------------
# 6. Saving and lineage
# ---------------------------------------------------------------------------------------------------------------


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


def read_lineage(folder: str | os.PathLike) -> dict | None:
    """A model folder's lineage.json (None when it has none, e.g. a model converted from Meta's release)."""
    path = Path(folder) / LINEAGE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def _versions() -> dict:
    import accelerate
    import datasets
    import transformers

    found = {
        "codellama_hf": codellama_hf.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "accelerate": accelerate.__version__,
        "datasets": datasets.__version__,
    }
    try:
        import deepspeed

        found["deepspeed"] = deepspeed.__version__
    except ImportError:
        pass
    return found


def lineage_record(*, config: StageConfig, base: dict, data_info: dict, model, tokenizer, trainer, runtime: float):
    """What a model card needs to say where a model came from: base, stage, data, tokens, hyperparameters."""
    from codellama_hf.tokenizer import supports_infilling

    return {
        "format": 1,
        "stage": config.stage,
        "base_model": base,
        "data": data_info,
        "tokens_seen": int(trainer.state.num_input_tokens_seen),
        "steps": trainer.state.global_step,
        "plan": config.plan.to_dict(),
        "hyperparameters": config.hyperparameters(),
        "rope_theta": rope_theta(model.config),
        "max_position_embeddings": model.config.max_position_embeddings,
        "vocab_size": len(tokenizer),
        "infilling": supports_infilling(tokenizer),
        "train_runtime_s": round(runtime, 1),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
    }


def plot_training_curves(log_history: list[dict], path: Path) -> None:
    """Loss and learning rate per step, as a PNG beside the model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [e for e in log_history if "loss" in e]
    if not points:
        return
    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax_loss.plot([e["step"] for e in points], [e["loss"] for e in points])
    ax_loss.set(xlabel="step", ylabel="training loss", title="loss")
    ax_lr.plot([e["step"] for e in points], [e["learning_rate"] for e in points])
    ax_lr.set(xlabel="step", ylabel="learning rate", title="schedule")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_final(trainer: Trainer, lineage: dict, adapter: AdapterArguments | None = None) -> Path:
    """Write the final model as a plain HF folder (weights, config with both rope keys, tokenizer, lineage).

    Everything goes to a temporary folder first (under ZeRO-3 every process takes part in gathering the weights);
    files then move into output_dir with lineage.json last, so a folder with lineage.json is a finished model.
    A LoRA stage saves its adapter in output_dir/adapter and, with merge_adapter, the merged model beside it.
    """
    out = Path(trainer.args.output_dir)
    tmp = out / ".final.tmp"
    lora = adapter is not None and adapter.use_peft
    state = _state()
    if state.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    state.wait_for_everyone()
    trainer.model.config.use_cache = True  # for the saved config: inference wants the cache
    gather_full_state_for_final_save(trainer)  # FSDP checkpoints are sharded; the final model is gathered once
    trainer.save_model(str(tmp / "adapter" if lora else tmp))
    if state.is_main_process:
        if lora:
            write_adapter_metadata(trainer.accelerator.unwrap_model(trainer.model), tmp / "adapter")
            complete_model_folder(tmp / "adapter", tokenizer=trainer.processing_class)
            write_json(tmp / "adapter" / LINEAGE_FILE, lineage, sort_keys=True)
            if adapter.merge_adapter:
                merged = merge_and_save(tmp / "adapter", tmp / ".merged")
                lineage = json.loads((merged / LINEAGE_FILE).read_text())  # now with an "adapter" entry
                for path in merged.iterdir():
                    os.replace(path, tmp / path.name)
                merged.rmdir()
        elif not any(tmp.glob("*.safetensors")):
            raise RuntimeError(
                f"no weights were written to {tmp} (DeepSpeed ZeRO-3 needs "
                "stage3_gather_16bit_weights_on_model_save: true)"
            )
        complete_model_folder(tmp, tokenizer=trainer.processing_class)  # tokenizer.model, 4.x-readable files
        trainer.save_state()
        plot_training_curves(trainer.state.log_history, tmp / "training_curves.png")
        write_json(tmp / LINEAGE_FILE, lineage, sort_keys=True)
        for path in sorted(tmp.iterdir(), key=lambda p: p.name == LINEAGE_FILE):
            if (out / path.name).is_dir():
                shutil.rmtree(out / path.name)
            os.replace(path, out / path.name)
        tmp.rmdir()
    state.wait_for_everyone()
    return out


def print_summary(lineage: dict, out: Path, config: StageConfig) -> None:
    """Where the model went and what it learned, for the person at the terminal."""
    from rich.panel import Panel
    from rich.table import Table

    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    losses = [e["loss"] for e in history if "loss" in e]
    average = next((e["train_loss"] for e in history if "train_loss" in e), None)
    table = Table.grid(padding=(0, 2))
    base = lineage["base_model"]
    started = base["name_or_path"] or f"random {base['random_init']} model (seed {base['seed']})"
    rows = [
        ("model", f"{out}  (AutoModelForCausalLM.from_pretrained({str(out)!r}))"),
        ("started from", started),
        (
            "steps",
            f"{lineage['steps']:,} x {config.plan.tokens_per_step:,} tokens; {lineage['tokens_seen']:,} "
            f"tokens seen in {lineage['train_runtime_s']:.0f} s",
        ),
        ("loss", f"{losses[0]:.3f} -> {losses[-1]:.3f}" if losses else f"{average:.3f} on average (no step logged)"),
        (
            "rope theta",
            f"{lineage['rope_theta']:,.0f} (config.json: rope_parameters and rope_theta), "
            f"max positions {lineage['max_position_embeddings']:,}",
        ),
        (
            "vocabulary",
            f"{lineage['vocab_size']:,} tokens = embedding rows; infilling {'yes' if lineage['infilling'] else 'no'}",
        ),
        ("checkpoints", ", ".join(p.name for p in checkpoints(out)) or "none kept"),
        ("curves", f"{out / 'training_curves.png'}; tensorboard --logdir {out / 'runs'}"),
        ("lineage", str(out / LINEAGE_FILE)),
    ]
    for name, value in rows:
        table.add_row(f"[bold]{name}[/bold]", value)
    _print(Panel(table, title=f"{config.stage} stage finished", expand=False))


# ---------------------------------------------------------------------------------------------------------------
# 7. The whole stage
# ---------------------------------------------------------------------------------------------------------------


def run_stage(
    stage: str,
    *,
    default_config: str | os.PathLike,
    argv: list[str] | None = None,
    build_data=None,
    collator=None,
    chat_template: str | None = None,
    check_data=None,
) -> Path | None:
    """Parse the recipe, train the stage and save it; returns the output folder (None with plan_only).

    A stage is its data: `build_data(data_args, config, tokenizer) -> (rows, info)` (default: documents -> FIM ->
    packed rows) and the `collator` for those rows; `chat_template` goes into the saved tokenizer; `check_data`
    validates the data settings before a model is loaded. Everything else is shared by all stages.
    """
    from codellama_hf.attention import prepare_collator, resolve_attn_implementation
    from codellama_hf.packing import PackedCollator
    from codellama_hf.tokenizer import infill_ids

    # 1. Configuration: YAML + command line -> dataclasses, the batch plan, and the distributed state (gloo for
    # DeepSpeed on CPU, created by StageConfig before transformers would)
    model_args, data_args, config = parse_stage_config(stage, argv, default_config=default_config)
    if not config.plan_only or model_args.attn_implementation == "auto":  # a GPU backend is no error in a preview
        model_args.attn_implementation = resolve_attn_implementation(model_args.attn_implementation, report=_print)
    speed.prepare(model_args, config)  # Liger / sequence-parallel settings checked before any weights are read
    if config.plan_only:
        print(config.plan.describe())
        return None
    _ = config.device  # accelerate's state, set up the way TrainingArguments wants it (backend, timeout)
    _print(f"[bold]{stage} stage[/bold] -> {config.output_dir}\n{config.plan.describe()}")
    if check_data is not None:
        check_data(data_args)
    prepare_output_dir(config)
    # 2. Tokenizer and model (theta set through rope_parameters and checked in the rotary embedding; LoRA adapters)
    tokenizer, model, base = load_tokenizer_and_model(model_args, config)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    parameters = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())  # ZeRO-3 partitions them
    _print(
        f"model: {parameters:,} parameters, rope theta {effective_rope_theta(model):,.0f}, "
        f"vocabulary {len(tokenizer):,}"
    )
    speed.register_fused_loss_weight(model, config)
    _print(speed.describe_memory_plan(*speed.memory_plan(model, model_args, config)))
    # 3. Data: rows for this stage (documents -> FIM -> packed rows by default)
    train_dataset, data_info = (build_data or build_train_dataset)(data_args, config, tokenizer)
    # 4. Trainer, resuming where a checkpoint left off; the collator gives the attention backend what keeps packed
    # documents apart, checked on a real micro-batch
    collator = collator or PackedCollator()
    prepare_collator(collator, train_dataset, config.per_device_train_batch_size, model.config._attn_implementation)
    signature = run_signature(config, data_args)
    trainer = StageTrainer(
        model=model,
        args=config,
        train_dataset=train_dataset,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[complete_checkpoint_callback(), RunSignatureCallback(signature)],
        infill=infill_ids(tokenizer) if data_info.get("fim") else None,
    )
    if trainer.is_deepspeed_enabled:
        check_zero3_saves_weights(trainer.accelerator.state.deepspeed_plugin.deepspeed_config)
        check_deepspeed_config(trainer.accelerator.state.deepspeed_plugin.deepspeed_config)
    resume = resume_checkpoint(config, signature)
    # 5. Train
    started = time.time()
    trainer.train(resume_from_checkpoint=resume)
    # 6. Save the final model with its lineage, and say where it went
    lineage = lineage_record(
        config=config,
        base=base,
        data_info=data_info,
        model=trainer.model,
        tokenizer=tokenizer,
        trainer=trainer,
        runtime=time.time() - started,
    )
    if chat_template is not None:
        lineage["chat_template"] = chat_template
    out = save_final(trainer, lineage, model_args)
    if _state().is_main_process:
        print_summary(json.loads((out / LINEAGE_FILE).read_text()), out, config)
    return out


def main(stage: str, *, default_config: str | os.PathLike, **stage_hooks) -> None:
    """Entry point of recipes/<stage>.py: bad input ends in one line that names the problem (exit 2), as in the CLI."""
    try:
        run_stage(stage, default_config=default_config, **stage_hooks)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"{stage} stage: error: {err}", file=sys.stderr)
        sys.exit(2)
