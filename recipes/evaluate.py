"""Evaluate a model on the paper's benchmarks and write its report (results JSON per task, report.md, PNG plots).

Paper protocol (§3): HumanEval zero-shot and MBPP 3-shot, greedy pass@1 (or n samples at T=0.8,
top-p 0.95 for pass@10/100); MultiPL-E zero-shot greedy; HumanEval infilling (single/multi-line) in PSM and SPM,
greedy pass@1; key retrieval at depths 0/0.2/0.4 and perplexity vs context length. Model-written code only runs
with `--allow_code_execution true` (see codellama_hf/evaluation/sandbox.py).

    python recipes/evaluate.py --model outputs/tiny/code --allow_code_execution true       # tiny preset
    python recipes/evaluate.py --config recipes/configs/7b/evaluate.yaml --model outputs/7b/lcft \\
        --allow_code_execution true
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from trl import TrlParser

from codellama_hf.evaluation.benchmarks import EXECUTION_TASKS
from codellama_hf.evaluation.report import new_result, table, write_report, write_result
from codellama_hf.evaluation.runner import (
    ExecutionSettings,
    GenerationSettings,
    evaluate_execution,
    evaluate_key_retrieval,
    evaluate_perplexity,
    model_folder_name,
)
from codellama_hf.generation import HFBackend, load_model

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "tiny" / "evaluate.yaml"


@dataclass
class EvaluateConfig:
    model: str = field(default="outputs/tiny/code", metadata={"help": "model folder or Hub id"})
    out: str = field(default="eval_results", metadata={"help": "results root; the model's folder goes inside"})
    tasks: list[str] = field(
        default_factory=lambda: [
            *EXECUTION_TASKS,
            "key-retrieval",
            "perplexity",
        ]
    )
    infill_formats: list[str] = field(default_factory=lambda: ["psm", "spm"])
    n_samples: int = 1
    temperature: float | None = None
    top_p: float = 0.95
    max_new_tokens: int = 512
    batch_size: int = 8
    limit: int | None = field(default=None, metadata={"help": "only the first N problems of each benchmark"})
    seed: int = 1234
    dtype: str = "auto"
    allow_code_execution: bool = False
    workers: int = 2
    mbpp_source: str = "google-research-datasets/mbpp"
    key_lengths: list[int] = field(default_factory=lambda: [8192, 16384, 24576])
    key_depths: list[float] = field(default_factory=lambda: [0.0, 0.2, 0.4])
    key_examples: int = 4
    ppl_lengths: list[int] = field(default_factory=lambda: [1024, 4096, 16384])
    ppl_files: list[str] = field(default_factory=list)
    ppl_max_tokens_per_file: int | None = None
    prompt_form: str = field(default="auto", metadata={"help": "auto, strip or unstripped (evaluation/prompts.py)"})
    prompt_style: str = field(default="completion", metadata={"help": "completion, or chat for instruct models"})


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    # 1. Config: YAML (default: the tiny preset) with command-line overrides.
    (config,) = TrlParser([EvaluateConfig]).parse_args_and_config()
    folder = Path(config.out) / model_folder_name(config.model)

    # 2. Model and tokenizer (bf16 + flash-attention on GPU when available, fp32 + SDPA on CPU).
    model, tokenizer = load_model(config.model, dtype=config.dtype)
    backend = HFBackend(model, tokenizer, batch_size=config.batch_size, name=config.model)
    generation = GenerationSettings(
        n_samples=config.n_samples,
        temperature=config.temperature,
        top_p=config.top_p,
        max_new_tokens=config.max_new_tokens,
        batch_size=config.batch_size,
        seed=config.seed,
    )
    execution = ExecutionSettings(allow_code_execution=config.allow_code_execution, workers=config.workers)

    # 3. Execution benchmarks; data that cannot be reached here (e.g. MBPP without the Hub) is recorded as skipped.
    for task in [t for t in config.tasks if t not in ("key-retrieval", "perplexity")]:
        options = {"source": config.mbpp_source} if task == "mbpp" else {}
        formats = config.infill_formats if task.startswith("humaneval-infill-") else ["psm"]
        for fmt in formats:
            try:
                evaluate_execution(
                    task,
                    backend,
                    config.model,
                    folder,
                    generation=generation,
                    execution=execution,
                    infill_format=fmt,
                    limit=config.limit,
                    benchmark_options=options,
                    prompt_form=config.prompt_form if not task.startswith("humaneval-infill-") else "auto",
                    prompt_style=config.prompt_style if not task.startswith("humaneval-infill-") else "completion",
                )
            except RuntimeError as err:
                if "could not load" not in str(err):
                    raise
                logging.warning("%s skipped: %s", task, err)
                write_result(folder, new_result(task, config.model, skipped=str(err)))

    # 4. Long context: key retrieval and perplexity vs context length.
    if "key-retrieval" in config.tasks:
        evaluate_key_retrieval(
            model,
            tokenizer,
            config.model,
            folder,
            lengths=config.key_lengths,
            depths=config.key_depths,
            examples=config.key_examples,
            seed=config.seed,
            batch_size=1,
        )
    if "perplexity" in config.tasks:
        evaluate_perplexity(
            model,
            tokenizer,
            config.model,
            folder,
            lengths=config.ppl_lengths,
            files=config.ppl_files,
            max_tokens_per_file=config.ppl_max_tokens_per_file,
        )

    # 5. Report: table of every result in the model's folder, plots as PNG.
    report = write_report(folder)
    from codellama_hf.evaluation.report import load_results

    print(table(load_results(folder)))
    print(f"report: {report}")


if __name__ == "__main__":
    main()
