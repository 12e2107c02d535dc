"""The evaluation settings, one dataclass per concern, shared by `codellama-hf evaluate` and recipes/evaluate.py.

Both entry points parse these dataclasses with transformers' HfArgumentParser (the recipe through TrlParser, which
adds `--config file.yaml`), so a setting has one name in both and either spelling: `--n_samples 200` or
`--n-samples 200`, `--allow_code_execution true` or `--allow-code-execution`. Each `codellama-hf evaluate TASK`
takes the dataclasses its task needs; the recipe takes them all and runs a suite of tasks (`SuiteOptions`).
The functions below turn parsed settings into runs of evaluation/runner.py, for both entry points.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from codellama_hf.evaluation.benchmarks import EXECUTION_TASKS
from codellama_hf.evaluation.report import new_result, write_result
from codellama_hf.evaluation.runner import (
    ExecutionSettings,
    GenerationSettings,
    evaluate_cross_file,
    evaluate_execution,
    evaluate_key_retrieval,
    evaluate_perplexity,
    model_folder_name,
)
from codellama_hf.generation import BACKENDS, get_backend

log = logging.getLogger(__name__)

LONG_CONTEXT_TASKS = ("key-retrieval", "perplexity")
INFILL_FORMATS = ("psm", "spm")


@dataclass
class ModelOptions:
    model: str = field(metadata={"help": "model folder or Hub id"})
    out: str = field(default="eval_results", metadata={"help": "results root; the model's folder goes inside"})
    dtype: str = field(default="auto", metadata={"help": "auto (bf16 on GPU, fp32 on CPU), bfloat16, float32, ..."})
    device: str | None = field(default=None, metadata={"help": "cuda, cpu, ... (default: cuda when available)"})
    batch_size: int = field(default=8, metadata={"help": "sequences per forward pass"})
    seed: int = field(default=1234, metadata={"help": "sampling and example-drawing seed"})

    @property
    def folder(self) -> Path:
        """OUT/<model name>: where every result of this model goes."""
        return Path(self.out) / model_folder_name(self.model)

    def load(self):
        """The model and tokenizer in this process (bf16 + flash-attention on GPU when available, fp32 on CPU)."""
        from codellama_hf.generation import load_model

        return load_model(self.model, dtype=self.dtype, device=self.device)


@dataclass
class ExecutionOptions(ExecutionSettings):
    """The sandbox settings (runner.ExecutionSettings) plus where MBPP and MultiPL-E come from."""

    mbpp_source: str | None = field(
        default=None,
        metadata={"help": "MBPP: Hub dataset or local .jsonl/.json/.parquet (default google-research-datasets/mbpp)"},
    )
    multiple_source: str | None = field(
        default=None, metadata={"help": "MultiPL-E: local JSON/JSONL file or Hub dataset (default: the registry copy)"}
    )

    def benchmark_options(self, task: str) -> dict:
        if task == "mbpp" and self.mbpp_source:
            return {"source": self.mbpp_source}
        if task.startswith("multiple-") and self.multiple_source:
            return {"source": self.multiple_source}
        return {}


@dataclass
class GenerationOptions:
    """How completions are made (the paper's protocol by default: greedy for one sample, T=0.8 and top-p 0.95 for
    several) and by which back end."""

    n_samples: int = field(default=1, metadata={"help": "samples per problem (1: greedy; >1: sampling)"})
    temperature: float | None = field(default=None, metadata={"help": "default 0.8 when sampling"})
    top_p: float = field(default=0.95, metadata={"help": "nucleus sampling mass when sampling"})
    max_new_tokens: int = field(default=512, metadata={"help": "token cap of each completion"})
    limit: int | None = field(default=None, metadata={"help": "only the first N problems of each benchmark"})
    task_ids: list[str] | None = field(default=None, metadata={"help": "only these problems, e.g. HumanEval/23"})
    prompt_form: Literal["auto", "strip", "unstripped"] = field(
        default="auto",
        metadata={
            "help": "strip (bigcode's default for HumanEval/MultiPL-E) or unstripped prompts; auto: the benchmark's "
            "default when every prompt ends on a token boundary of the tokenizer, else the other (not infilling)"
        },
    )
    prompt_style: Literal["completion", "chat"] = field(
        default="completion",
        metadata={
            "help": "chat: instruct models, through the tokenizer's chat template (Code Llama - Instruct: [INST]); "
            "not infilling"
        },
    )
    infill_formats: list[str] = field(
        default_factory=lambda: ["psm"],
        metadata={"help": "infilling tasks: prompt layouts, one result each", "aliases": ["--format"]},
    )
    backend: Literal[BACKENDS] = field(
        default="hf",
        metadata={
            "help": "hf: transformers in this process; vllm: vLLM in this process; openai: an OpenAI-compatible "
            "server such as `vllm serve MODEL` (--url), prompted with the token ids of --model's tokenizer"
        },
    )
    url: str | None = field(
        default=None, metadata={"help": "openai back end: base URL, e.g. http://127.0.0.1:8000/v1"}
    )
    served_model: str | None = field(
        default=None, metadata={"help": "openai back end: model name (default: the first listed)"}
    )
    concurrency: int = field(default=8, metadata={"help": "openai back end: requests in flight"})

    def __post_init__(self):
        wrong = [f for f in self.infill_formats if f not in INFILL_FORMATS]
        if wrong or not self.infill_formats:
            raise ValueError(f"infill_formats {self.infill_formats}: choose from {list(INFILL_FORMATS)}")

    def settings(self, model: ModelOptions) -> GenerationSettings:
        return GenerationSettings(
            n_samples=self.n_samples,
            temperature=self.temperature,
            top_p=self.top_p,
            max_new_tokens=self.max_new_tokens,
            batch_size=model.batch_size,
            seed=model.seed,
        )

    def make_backend(self, model: ModelOptions, loaded=None):
        """The back end these options name; `loaded` (model, tokenizer) is reused by the hf back end."""
        if self.backend == "hf" and loaded is not None:
            from codellama_hf.generation.hf import HFBackend

            return HFBackend(*loaded, batch_size=model.batch_size, name=model.model)
        return get_backend(
            self.backend,
            model.model,
            url=self.url,
            served_model=self.served_model,
            dtype=model.dtype,
            device=model.device,
            batch_size=model.batch_size,
            concurrency=self.concurrency,
            seed=model.seed,
        )


@dataclass
class KeyRetrievalOptions:
    key_lengths: list[int] = field(
        default_factory=lambda: [8192, 16384, 24576], metadata={"help": "key retrieval: prompt lengths in tokens"}
    )
    key_depths: list[float] = field(
        default_factory=lambda: [0.0, 0.2, 0.4],
        metadata={"help": "key retrieval: relative depths of the key", "aliases": ["--depths"]},
    )
    key_examples: int = field(
        default=4,
        metadata={"help": "key retrieval: examples per (length, depth); the paper uses 64", "aliases": ["--examples"]},
    )


@dataclass
class PerplexityOptions:
    ppl_lengths: list[int] = field(
        default_factory=lambda: [1024, 4096, 16384], metadata={"help": "perplexity: context lengths in tokens"}
    )
    ppl_files: list[str] = field(
        default_factory=list,
        metadata={"help": "perplexity: text/code files (default: standard-library .py files)", "aliases": ["--files"]},
    )
    ppl_min_bytes: int = field(
        default=50_000, metadata={"help": "perplexity: smallest default file", "aliases": ["--min-bytes"]}
    )
    ppl_max_tokens_per_file: int | None = field(
        default=None, metadata={"help": "perplexity: tokens scored per file", "aliases": ["--max-tokens-per-file"]}
    )


@dataclass
class CrossFileOptions:
    repositories: list[str] = field(
        default_factory=list,
        metadata={"help": "held-out repository folders (default: standard-library packages, one repository each)"},
    )
    per_repository: int = field(default=20, metadata={"help": "tasks per repository"})
    context_tokens: int = field(default=2048, metadata={"help": "token budget of the repository context"})
    infill_format: Literal["psm", "spm"] = field(
        default="psm", metadata={"help": "infilling prompt layout", "aliases": ["--format"]}
    )
    max_new_tokens: int = field(default=64, metadata={"help": "token cap of each infilled line"})


@dataclass
class SuiteOptions:
    """recipes/evaluate.py: which tasks one run evaluates, in order."""

    tasks: list[str] = field(
        default_factory=lambda: [*EXECUTION_TASKS, *LONG_CONTEXT_TASKS],
        metadata={"help": f"any of {', '.join([*EXECUTION_TASKS, *LONG_CONTEXT_TASKS])}"},
    )

    baseline: str | None = field(
        default=None,
        metadata={
            "help": "results folder of a model to compare with (e.g. eval_results/lcft, the model before instruct "
            "tuning): the run ends with the infilling change and its 95%% interval in comparison.md "
            "(evaluation/compare.py)"
        },
    )

    def __post_init__(self):
        unknown = [t for t in self.tasks if t not in (*EXECUTION_TASKS, *LONG_CONTEXT_TASKS)]
        if unknown:
            raise ValueError(
                f"unknown evaluation task(s) {unknown}; choose from {[*EXECUTION_TASKS, *LONG_CONTEXT_TASKS]}"
            )
        if self.baseline is not None and not Path(self.baseline).is_dir():  # before the run, not after it
            raise ValueError(f"baseline={self.baseline}: no such results folder (an earlier run's OUT/<model name>)")


def run_execution(
    task: str,
    backend,
    model: ModelOptions,
    generation: GenerationOptions,
    execution: ExecutionOptions,
    *,
    skip_unreachable: bool = False,
) -> list[dict]:
    """Generate and score one execution task, once per infilling format for infilling tasks.

    With `skip_unreachable`, data that cannot be reached (e.g. MBPP without the Hub) is recorded as skipped."""
    infilling = task.startswith("humaneval-infill-")
    results = []
    for fmt in generation.infill_formats if infilling else ["psm"]:
        try:
            result = evaluate_execution(
                task,
                backend,
                model.model,
                model.folder,
                generation=generation.settings(model),
                execution=execution,
                infill_format=fmt,
                limit=generation.limit,
                benchmark_options=execution.benchmark_options(task),
                prompt_form="auto" if infilling else generation.prompt_form,
                prompt_style="completion" if infilling else generation.prompt_style,
                task_ids=generation.task_ids,
            )
        except RuntimeError as err:
            if not skip_unreachable or "could not load" not in str(err):
                raise
            log.warning("%s skipped: %s", task, err)
            result = new_result(task, model.model, skipped=str(err))
            write_result(model.folder, result)
        results.append(result)
    return results


def run_key_retrieval(loaded, model: ModelOptions, options: KeyRetrievalOptions, *, batch_size: int | None = None):
    return evaluate_key_retrieval(
        *loaded,
        model.model,
        model.folder,
        lengths=options.key_lengths,
        depths=options.key_depths,
        examples=options.key_examples,
        seed=model.seed,
        batch_size=batch_size or model.batch_size,
    )


def run_perplexity(loaded, model: ModelOptions, options: PerplexityOptions):
    return evaluate_perplexity(
        *loaded,
        model.model,
        model.folder,
        lengths=options.ppl_lengths,
        files=options.ppl_files,
        min_bytes=options.ppl_min_bytes,
        max_tokens_per_file=options.ppl_max_tokens_per_file,
    )


def run_cross_file(loaded, model: ModelOptions, options: CrossFileOptions):
    return evaluate_cross_file(
        *loaded,
        model.model,
        model.folder,
        repositories=options.repositories,
        per_repository=options.per_repository,
        context_tokens=options.context_tokens,
        infill_format=options.infill_format,
        max_new_tokens=options.max_new_tokens,
        batch_size=model.batch_size,
        seed=model.seed,
    )
