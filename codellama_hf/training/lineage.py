"""What a finished stage leaves behind: the model folder (weights, config with both rope keys, tokenizer), its
lineage.json (base, stage, data, tokens, hyperparameters: what model cards read), training curves and a summary."""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

import torch
from transformers import Trainer

import codellama_hf
from codellama_hf.adapters import AdapterArguments, merge_and_save, write_adapter_metadata
from codellama_hf.export.model_folder import complete_model_folder
from codellama_hf.io import write_json
from codellama_hf.models import rope_theta
from codellama_hf.training.checkpoints import checkpoints
from codellama_hf.training.distributed import main_print as _print
from codellama_hf.training.distributed import process_state as _state
from codellama_hf.training.precision import gather_full_state_for_final_save

LINEAGE_FILE = "lineage.json"  # written last into a finished model folder: its presence marks completion


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


def lineage_record(*, config, base: dict, data_info: dict, model, tokenizer, trainer, runtime: float):
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
                lineage["adapter"]["merged_from"] = str(out / "adapter")  # where the adapter lands, not tmp
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


def print_summary(lineage: dict, out: Path, config) -> None:
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
