"""Training-stage configuration: YAML recipes parsed into dataclasses.

A stage (registered in training/stages.py) is a data builder plus hyperparameters. The hyperparameters live in
`recipes/configs/<size>/<stage>.yaml` and are parsed, TrlParser-style, into three dataclasses: `ModelArguments`
(what to start from), `DataArguments` (what to train on) and `StageConfig` (transformers' `TrainingArguments` plus
the stage's batch and length settings). Any field can be overridden on the command line; a key that is not a field
is an error naming the file.

The paper specifies batches in tokens (4M tokens of 4,096-token sequences, paper §2.6), so `StageConfig` takes
`tokens_per_step` and derives gradient accumulation from the launch's world size and micro-batch with the batch
plan (training/batch_plan.py). The plan is computed in `__post_init__`, before transformers turns "auto" DeepSpeed
values into numbers.
"""

from __future__ import annotations

import difflib
import json
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

from transformers import TrainingArguments

from codellama_hf.adapters import AdapterArguments
from codellama_hf.io import read_yaml_mapping
from codellama_hf.training.batch_plan import batch_plan
from codellama_hf.training.distributed import configured_state, launch_world_size

PAPER_MIN_LR_RATE = 1 / 30  # "final learning rate 1/30th of the peak" (paper §2.6)


@dataclass
class ModelArguments(AdapterArguments):
    """What a stage starts from, and how it is trained: all weights, or LoRA / QLoRA adapters (AdapterArguments)."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Model folder or Hub id to continue training (Llama 2 for the code stage, the previous "
            "stage's output_dir after that)."
        },
    )
    tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Tokenizer folder; default: the model's own. The code stage from Llama 2 needs Code "
            "Llama's tokenizer (`codellama-hf tokenizer --llama2 ... --out ...`)."
        },
    )
    init_model_size: str | None = field(
        default=None,
        metadata={
            "help": "When model_name_or_path is unset or does not exist, start from a random model of this "
            "size (only 'tiny' is sensible: the CPU preset) with the tiny tokenizer."
        },
    )
    infilling_pieces: bool = field(
        default=True,
        metadata={
            "help": "With init_model_size tiny and no tokenizer_name_or_path: whether the tiny tokenizer carries "
            "Code Llama's 16 infilling pieces (the Python branch, like Llama 2, has none)."
        },
    )
    resize_token_embeddings: bool = field(
        default=False,
        metadata={
            "help": "Grow the embeddings to the tokenizer's size (Llama 2's 32000 -> Code Llama's 32016, new "
            "rows at the mean embedding). Otherwise a size mismatch is an error."
        },
    )
    rope_theta: float | None = field(
        default=None,
        metadata={
            "help": "RoPE base period to train with (long context: 1e6). Set through rope_parameters and "
            "checked in the rotary embedding before the first step."
        },
    )
    max_position_embeddings: int | None = field(
        default=None, metadata={"help": "New max_position_embeddings for the config (long context: 16384)."}
    )
    dtype: str = field(
        default="auto",
        metadata={
            "help": "Weights dtype to load: auto, bfloat16, float16 or float32.",
            "choices": ["auto", "bfloat16", "float16", "float32"],
        },
    )
    attn_implementation: str = field(
        default="auto",
        metadata={
            "help": "auto (flash_attention_2 on CUDA with flash-attn installed, else flex_attention on CUDA, sdpa "
            "without CUDA; the choice is printed), sdpa, eager, flex_attention, flash_attention_2 or "
            "flash_attention_3. The collators give each backend what keeps packed documents apart at any "
            "micro-batch (codellama_hf/attention.py); tested on CPU with eager, sdpa, flex_attention and "
            "flash-attention's varlen path on plain-torch kernels. A backend that cannot run here is an error.",
            "choices": ["auto", "sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3"],
        },
    )


@dataclass
class DataArguments:
    """What a stage trains on: sources read by codellama_hf.corpus, packed with optional FIM."""

    dataset_mixture: str | None = field(
        default=None,
        metadata={
            "help": "A mixture preset ('code' or 'python': the paper's Table 1 proportions) or a mixture "
            "YAML file, read by codellama_hf.corpus.load_mixture; 'none' to use dataset_sources."
        },
    )
    dataset_sources: list[str] | None = field(
        default=None,
        metadata={
            "help": "Local folders of source files, data files, or datasets names / paths, read as one "
            "corpus without a mixture (e.g. --dataset_mixture none --dataset_sources ~/src/repo)."
        },
    )
    mixture_sources: dict | str | None = field(
        default=None,
        metadata={
            "help": "Sources per mixture component, e.g. {code: [~/src/repo], nl: [{dataset: wikitext}]} "
            "(JSON on the command line); components left out use their default (embedded) corpus."
        },
    )
    dataset_split: str = field(default="train", metadata={"help": "Split of the mixture's components to train on."})
    text_column: str = field(default="text", metadata={"help": "Column holding the document text."})
    fim_rate: float = field(
        default=0.0, metadata={"help": "Share of documents turned into fill-in-the-middle examples (paper: 0.9)."}
    )
    fim_spm_rate: float = field(
        default=0.5, metadata={"help": "Share of FIM examples in suffix-prefix-middle order (paper: 0.5)."}
    )
    instruct_fim_rate: float | None = field(
        default=None,
        metadata={
            "help": "Instruct stage: share of the code rehearsal documents turned into FIM examples (PSM/SPM split "
            "by fim_spm_rate); dialogs and natural language never are. Unset: 0.9, the code stage's rate (paper "
            "§2.3), when the tokenizer has the infilling pieces (7B/13B Code Llama, whose Instruct models infill "
            "per Meta's model card), so instruct tuning keeps rehearsing infilling; else 0. A rate above 0 for a "
            "tokenizer without the pieces (34B, Python, 32,000 pieces) is an error."
        },
    )
    repository_samples: bool = field(
        default=False,
        metadata={
            "help": "Code stages: concatenate each repository's files (dependency order, plain-text path headers) "
            "into samples cut at file boundaries, FIM on the last file's span (data/repository.py). Files are "
            "grouped by the source and path that dataset_sources and mixtures keep."
        },
    )
    repository_key_depth: int = field(
        default=0,
        metadata={"help": "Repository = source plus this many leading folders of the path (a folder of repos: 1)."},
    )
    packing_buffer: int = field(
        default=2000,
        metadata={"help": "Documents per chunk, packed together by best-fit (more: fewer padding tokens)."},
    )
    data_streams_per_process: int = field(
        default=2,
        metadata={
            "help": "Independent document streams each process reads (data/stream.py); dataloader_num_workers "
            "must divide it. The rows depend on it, not on the number of workers."
        },
    )

    def __post_init__(self):
        if isinstance(self.dataset_mixture, str) and self.dataset_mixture.lower() == "none":
            self.dataset_mixture = None
        for name in ("fim_rate", "fim_spm_rate", "instruct_fim_rate"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value}: must be between 0 and 1")
        if self.dataset_mixture is None and not self.dataset_sources:
            raise ValueError("no training data: set dataset_mixture (a preset or mixture file) or dataset_sources")
        if self.dataset_mixture is not None and self.dataset_sources:
            raise ValueError(
                "dataset_sources reads one corpus without a mixture; with dataset_mixture, give "
                "sources per component in mixture_sources"
            )
        if not isinstance(self.data_streams_per_process, int) or self.data_streams_per_process < 1:
            raise ValueError(f"data_streams_per_process={self.data_streams_per_process!r}: must be a positive integer")
        if self.mixture_sources is not None and self.dataset_mixture is None:
            raise ValueError("mixture_sources needs dataset_mixture")

    def mixture_sources_dict(self) -> dict | None:
        """mixture_sources as a mapping (the command line passes it as JSON)."""
        if isinstance(self.mixture_sources, str):
            try:
                value = json.loads(self.mixture_sources)
            except json.JSONDecodeError as err:
                raise ValueError(f"mixture_sources={self.mixture_sources!r}: not JSON ({err})") from None
        else:
            value = self.mixture_sources
        if value is not None and not isinstance(value, dict):
            raise ValueError(f"mixture_sources must map component names to sources, got {value!r}")
        return value


def _paper_default(name: str, default):
    """A TrainingArguments field with this toolkit's default and transformers' own help text."""
    metadata = TrainingArguments.__dataclass_fields__[name].metadata
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class StageConfig(TrainingArguments):
    """TrainingArguments plus a stage's token batch, sequence length and run length, with the paper's defaults."""

    stage: str = field(default=None, metadata={"help": "Which registered stage this file configures."})
    seq_len: int = field(default=4096, metadata={"help": "Tokens per packed training sequence."})
    tokens_per_step: int = field(
        default=4 * 1024 * 1024,
        metadata={"help": "Global batch in tokens (paper: 4M = 1,024 x 4,096). Gradient accumulation is derived."},
    )
    train_tokens: int | None = field(
        default=None, metadata={"help": "Run length in tokens (alternative to max_steps; steps are rounded up)."}
    )
    plan_world_size: int | None = field(
        default=None,
        metadata={
            "help": "Compute the plan for this many processes instead of this launch's (with plan_only, "
            "to preview a cluster run)."
        },
    )
    plan_only: bool = field(default=False, metadata={"help": "Print the batch plan and exit."})
    quick_eval: list[str] | None = field(
        default=None,
        metadata={
            "help": "Evaluations run on the current weights during training (evaluation/during_training.py): any of "
            "infilling, perplexity, humaneval; logged, and kept in lineage.json. Default: none."
        },
    )
    quick_eval_steps: int = field(
        default=0, metadata={"help": "Run the quick evaluations every this many steps (0: only at the end)."}
    )
    quick_eval_repositories: list[str] | None = field(
        default=None,
        metadata={"help": "Held-out repository folders for the infilling evaluation (default: stdlib packages)."},
    )
    quick_eval_allow_code_execution: bool = field(
        default=False, metadata={"help": "Let the humaneval quick evaluation run model-written code in the sandbox."}
    )
    quick_eval_options: dict | str | None = field(
        default=None,
        metadata={
            "help": "More QuickEvalConfig fields as a mapping (JSON on the command line), e.g. {infilling_tasks: 2, "
            "perplexity_lengths: [64, 256], max_new_tokens: 16}: a cheaper set for small runs."
        },
    )
    sequence_parallel_size: int = field(
        default=1,
        metadata={
            "help": "Processes sharing each row (Ulysses sequence parallelism through DeepSpeed; needs a DeepSpeed "
            "launch). Data-parallel replicas = world / this; accumulation grows to keep tokens_per_step. Must "
            "divide the world size and the attention heads."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start over in an output_dir that holds an earlier run (its checkpoints are deleted)."},
    )
    # transformers fields whose meaning or default changes here
    gradient_accumulation_steps: int | None = field(
        default=None, metadata={"help": "Derived from tokens_per_step; setting it is only a consistency check."}
    )
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "Continue from a checkpoint folder, or 'latest' (the flag alone) for the newest complete "
            "checkpoint in output_dir; a fresh start when there is none yet.",
            "nargs": "?",
            "const": "latest",
        },
    )
    max_steps: int = field(default=None, metadata={"help": "Optimizer steps (alternative to train_tokens)."})
    adam_beta1: float = _paper_default("adam_beta1", 0.9)
    adam_beta2: float = _paper_default("adam_beta2", 0.95)
    lr_scheduler_type: str = _paper_default("lr_scheduler_type", "cosine_with_min_lr")
    lr_scheduler_kwargs: dict | str | None = _paper_default("lr_scheduler_kwargs", {"min_lr_rate": PAPER_MIN_LR_RATE})
    warmup_steps: float = _paper_default("warmup_steps", 1000)
    logging_steps: float = _paper_default("logging_steps", 10)
    save_steps: float = _paper_default("save_steps", 1000)
    save_total_limit: int | None = _paper_default("save_total_limit", 3)
    report_to: None | str | list[str] = _paper_default("report_to", "tensorboard")
    include_num_input_tokens_seen: str | bool = _paper_default("include_num_input_tokens_seen", True)
    # The stream tokenizes and packs in the DataLoader's workers (data/stream.py)
    dataloader_num_workers: int = _paper_default("dataloader_num_workers", 2)
    remove_unused_columns: bool = _paper_default("remove_unused_columns", False)  # keep position_ids

    def __post_init__(self):
        if not self.stage:
            raise ValueError("stage is not set: the recipe names it")
        if self.output_dir is None:
            raise ValueError("output_dir is not set: every stage writes its model and checkpoints there")
        world = self.plan_world_size or launch_world_size()
        if self.plan_world_size and not self.plan_only and self.plan_world_size != launch_world_size():
            raise ValueError(
                f"plan_world_size={self.plan_world_size} but this launch has {launch_world_size()} "
                "processes; plan_world_size is for previews with plan_only"
            )
        self.plan = batch_plan(
            tokens_per_step=self.tokens_per_step,
            seq_len=self.seq_len,
            micro_batch=self.per_device_train_batch_size,
            world_size=world,
            max_steps=self.max_steps,
            train_tokens=self.train_tokens,
            grad_accum=self.gradient_accumulation_steps,
            sequence_parallel=self.sequence_parallel_size,
        )
        self.gradient_accumulation_steps = self.plan.grad_accum
        self.max_steps = self.plan.max_steps
        if self.plan_only:  # nothing is trained: no run folders, and a GPU config previews on a laptop
            self.report_to = "none"
            self.bf16 = self.fp16 = False
        if configured_state() is not None:  # made by distributed.setup_distributed: TrainingArguments must keep it
            if self.accelerator_config is None:
                self.accelerator_config = {}
            if not isinstance(self.accelerator_config, dict):
                raise ValueError("accelerator_config must be a mapping when DeepSpeed runs on CPU")
            self.accelerator_config["use_configured_state"] = True
        self._pin_memory_only_with_an_accelerator()
        super().__post_init__()

    def _pin_memory_only_with_an_accelerator(self) -> None:
        """Pinned host memory only speeds copies to a device; without one torch warns on every run (quiet console)."""
        import torch

        if self.dataloader_pin_memory and not torch.accelerator.is_available():
            self.dataloader_pin_memory = False

    def hyperparameters(self) -> dict:
        """The optimisation settings a model card should quote."""
        keys = (
            "learning_rate",
            "adam_beta1",
            "adam_beta2",
            "adam_epsilon",
            "weight_decay",
            "max_grad_norm",
            "lr_scheduler_type",
            "lr_scheduler_kwargs",
            "warmup_steps",
            "seq_len",
            "tokens_per_step",
            "per_device_train_batch_size",
            "gradient_accumulation_steps",
            "max_steps",
            "bf16",
            "seed",
        )
        return {key: getattr(self, key) for key in keys}


ARGUMENT_CLASSES = (ModelArguments, DataArguments, StageConfig)


def config_path(stage: str, size: str = "tiny", root: str | os.PathLike | None = None) -> Path:
    """recipes/configs/<size>/<stage>.yaml in a checkout (root defaults to this repository)."""
    root = Path(root) if root else Path(__file__).resolve().parents[2] / "recipes" / "configs"
    return root / size / f"{stage}.yaml"


def read_config_file(path: str | os.PathLike) -> dict:
    """Load a recipe YAML and reject keys that are no field of the argument classes, naming the file."""
    config = read_yaml_mapping(path, "config file")
    known = {f.name for cls in ARGUMENT_CLASSES for f in fields(cls) if f.init} | {"env"}
    for key in config:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(
                f"{path}: unknown key {key!r}{hint}; keys must be fields of ModelArguments, "
                "DataArguments or StageConfig (see `--help`)"
            )
    return config


def with_config(argv: list[str] | None, default_config: str | os.PathLike | None) -> list[str]:
    """The command line (default: sys.argv) starting with `--config FILE` (default_config when none is given)."""
    argv = list(argv) if argv is not None else sys.argv[1:]
    if "--config" not in argv:
        if default_config is None:
            raise ValueError("no --config given")
        argv = ["--config", str(default_config), *argv]
    position = argv.index("--config")
    if position + 1 >= len(argv):
        raise ValueError("--config needs a YAML file")
    return [*argv[position : position + 2], *argv[:position], *argv[position + 2 :]]


def parse_stage_config(
    stage: str, argv: list[str] | None = None, *, default_config: str | os.PathLike | None = None
) -> tuple[ModelArguments, DataArguments, StageConfig]:
    """`--config file.yaml` (default: `default_config`) plus `--field value` overrides -> the three dataclasses."""
    from trl import TrlParser

    argv = with_config(argv, default_config)
    path = argv[1]
    config = read_config_file(path)
    if config.get("stage", stage) != stage:
        raise ValueError(
            f"{path} configures the {config['stage']!r} stage, not {stage!r}: use recipes/"
            f"{config['stage']}.py or a {stage} config"
        )
    if "stage" not in config:
        argv += ["--stage", stage]
    parser = TrlParser(ARGUMENT_CLASSES, allow_abbrev=False)  # `--learning_rat` must not pass for learning_rate
    try:
        model_args, data_args, stage_config = parser.parse_args_and_config(argv)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    if stage_config.stage != stage:
        raise ValueError(f"--stage {stage_config.stage}: this recipe trains the {stage!r} stage")
    return model_args, data_args, stage_config
