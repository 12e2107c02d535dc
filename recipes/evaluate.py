"""Evaluate a model on the paper's benchmarks and write its report (results JSON per task, report.md, PNG plots).

Paper protocol (§3): HumanEval zero-shot and MBPP 3-shot, greedy pass@1 (or n samples at T=0.8,
top-p 0.95 for pass@10/100); MultiPL-E zero-shot greedy; HumanEval infilling (single/multi-line) in PSM and SPM,
greedy pass@1; key retrieval at depths 0/0.2/0.4 and perplexity vs context length. Model-written code only runs
with `--allow_code_execution true` (see codellama_hf/evaluation/sandbox.py).

    python recipes/evaluate.py --model outputs/tiny/code --allow_code_execution true       # tiny preset
    python recipes/evaluate.py --config recipes/configs/7b/evaluate.yaml --model outputs/7b/lcft \\
        --allow_code_execution true

Without --config the tiny preset (configs/tiny/evaluate.yaml) applies. The settings are the dataclasses of
`codellama-hf evaluate` (codellama_hf/evaluation/options.py): each flag has one name in both and either spelling
(`--n_samples 200` or `--n-samples 200`); the recipe runs a list of tasks (`--tasks`) and writes one report.
"""

from __future__ import annotations

import logging
from pathlib import Path

from trl import TrlParser

from codellama_hf.evaluation.options import (
    LONG_CONTEXT_TASKS,
    ExecutionOptions,
    GenerationOptions,
    KeyRetrievalOptions,
    ModelOptions,
    PerplexityOptions,
    SuiteOptions,
    run_execution,
    run_key_retrieval,
    run_perplexity,
)
from codellama_hf.evaluation.report import load_results, table, write_report
from codellama_hf.training.config import with_config

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "tiny" / "evaluate.yaml"
OPTIONS = (ModelOptions, GenerationOptions, ExecutionOptions, KeyRetrievalOptions, PerplexityOptions, SuiteOptions)


def parse(argv: list[str] | None = None) -> tuple:
    """The settings: YAML (default: the tiny preset) with command-line overrides, one dataclass per OPTIONS."""
    return TrlParser(OPTIONS).parse_args_and_config(with_config(argv, DEFAULT_CONFIG))


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    # 1. Settings.
    model, generation, execution, keys, ppl, suite = parse(argv)

    # 2. Model and tokenizer in this process when a task needs them (the hf back end, long context).
    in_process = generation.backend == "hf" or any(t in LONG_CONTEXT_TASKS for t in suite.tasks)
    loaded = model.load() if in_process else None
    execution_tasks = [t for t in suite.tasks if t not in LONG_CONTEXT_TASKS]
    backend = generation.make_backend(model, loaded) if execution_tasks else None

    # 3. Execution benchmarks; data that cannot be reached here (e.g. MBPP without the Hub) is recorded as skipped.
    for task in execution_tasks:
        run_execution(task, backend, model, generation, execution, skip_unreachable=True)

    # 4. Long context: key retrieval (one prompt at a time) and perplexity vs context length.
    if "key-retrieval" in suite.tasks:
        run_key_retrieval(loaded, model, keys, batch_size=1)
    if "perplexity" in suite.tasks:
        run_perplexity(loaded, model, ppl)

    # 5. Report: table of every result in the model's folder, plots as PNG.
    report = write_report(model.folder)
    print(table(load_results(model.folder)))
    print(f"report: {report}")
    if suite.baseline:  # e.g. infilling before and after the instruct stage
        from codellama_hf.evaluation.compare import compare_results, comparison_report
        from codellama_hf.io import write_text

        rows = compare_results(suite.baseline, model.folder)
        path = write_text(model.folder / "comparison.md", comparison_report(rows, suite.baseline, model.folder))
        print(f"{path.read_text()}comparison: {path}")


if __name__ == "__main__":
    main()
