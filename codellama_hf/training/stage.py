"""The `Stage` object and its registry: what makes one training stage differ from another.

Every stage shares the machinery of run.py (configuration, model, streaming data, trainer, checkpoints, lineage);
a stage is its name, its tiny preset, the builder of its documents (a table the stream reads, with the encoder that
turns them into examples) and the reader of that table (what `codellama-hf data prepare` builds before a launch),
the collator, checks of its data settings made before a model is loaded, and the chat template its tokenizer is
saved with. Adding a stage is one `register_stage(Stage(...))` and one YAML file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from codellama_hf.data.fim import FIMConfig
from codellama_hf.data.packing import PackedCollator
from codellama_hf.data.stream import Encoder


@dataclass
class StageData:
    """A stage's documents (a datasets.Dataset with a text column), their encoder, and what the lineage says."""

    documents: Any
    encoder: Encoder
    info: dict
    fim: FIMConfig | None = None
    text_column: str | None = None  # the column the stream reads, when not data_args.text_column


@dataclass(frozen=True)
class Stage:
    name: str
    build_data: Callable[..., StageData]  # (data_args, config, tokenizer) -> StageData
    default_config: Path | None = None  # the tiny preset: `accelerate launch recipes/<name>.py` with no arguments
    collator: Callable[[], Any] = PackedCollator
    check_data: Callable[[Any], Any] | None = None  # (data_args) -> anything; raises ValueError on bad settings
    chat_template: str | None = None
    description: str = ""
    # (data_args, seed, *, num_proc, announce, stats) -> the document table build_data reads, which
    # `codellama-hf data prepare` builds before a launch; None: nothing to prepare
    read_documents: Callable[..., Any] | None = None


STAGES: dict[str, Stage] = {}


def register_stage(stage: Stage, *, replace: bool = False) -> Stage:
    """Make a stage known to run_stage and the recipes; registering a name twice is an error unless `replace`."""
    if stage.name in STAGES and not replace:
        raise ValueError(f"a stage named {stage.name!r} is already registered")
    STAGES[stage.name] = stage
    return stage


def get_stage(name: str) -> Stage:
    try:
        return STAGES[name]
    except KeyError:
        raise ValueError(f"unknown stage {name!r}: registered stages are {', '.join(sorted(STAGES))}") from None
