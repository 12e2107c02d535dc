"""`codellama-hf instruct generate`: the self-instruct pipeline from the command line."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from codellama_hf import selfinstruct
from codellama_hf.selfinstruct.generators import Generator, HFGenerator, OpenAIGenerator, VLLMGenerator
from codellama_hf.selfinstruct.pipeline import SelfInstructConfig, generate_self_instruct

# CLI: codellama-hf instruct generate


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "instruct",
        help="Code Llama - Instruct data: self-instruct with unit tests",
        description=selfinstruct.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="instruct_command", required=True, metavar="COMMAND")
    gen = commands.add_parser(
        "generate",
        help="questions -> tests -> solutions -> sandbox -> dataset (resumable)",
        description="Build a self-instruct dataset (paper §2.5). Rerun the same command to resume an interrupted run.",
    )
    gen.add_argument("--out", type=Path, required=True, help="work and output folder (dataset/, summary.json, caches)")
    source = gen.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="HF model folder or Hub id writing tests and solutions (paper: Code Llama 7B)")
    source.add_argument("--url", help="OpenAI-compatible server base URL instead, e.g. http://127.0.0.1:8000/v1")
    questions = gen.add_mutually_exclusive_group()
    questions.add_argument("--question-model", help="HF model for the questions (paper: Llama 2 70B; default --model)")
    questions.add_argument("--question-url", help="server for the questions (default: --url)")
    questions.add_argument(
        "--questions-file",
        type=Path,
        help="use these questions (one per line, or JSONL with 'question') instead of generating",
    )
    gen.add_argument(
        "--question-requests",
        type=int,
        default=1240,
        help="answers to the question prompt, 50 questions each (default 1240: the paper's 62,000)",
    )
    gen.add_argument("--max-questions", type=int, default=None, help="only the first N unique questions")
    gen.add_argument("--solutions", type=int, default=10, help="solutions per question (default 10)")
    gen.add_argument("--temperature", type=float, default=0.8, help="solution sampling temperature (default 0.8)")
    gen.add_argument("--top-p", type=float, default=0.95, help="solution nucleus sampling (default 0.95)")
    gen.add_argument("--max-new-tokens", type=int, default=512, help="for tests and solutions (default 512)")
    gen.add_argument("--question-max-new-tokens", type=int, default=2048)
    gen.add_argument(
        "--chat-template",
        action="store_true",
        help="chat models: send the prompts' turns through the chat template (--api chat for servers)",
    )
    gen.add_argument(
        "--api",
        choices=("completions", "chat"),
        default=None,
        help="server API (default: chat with --chat-template, else completions)",
    )
    gen.add_argument(
        "--backend",
        choices=("hf", "vllm", "openai"),
        default=None,
        help="generation back end for --model / --question-model: hf (default) or vllm in this process; "
        "openai is implied by --url / --question-url",
    )
    gen.add_argument("--served-model", help="model name on the server (default: the first one it lists)")
    gen.add_argument("--question-served-model", help="model name on the question server")
    gen.add_argument("--concurrency", type=int, default=8, help="parallel requests to a server (default 8)")
    gen.add_argument("--batch-size", type=int, default=8, help="prompts per batch for HF models (default 8)")
    gen.add_argument("--dtype", default="auto", help="HF models: auto (bf16 on GPU, fp32 on CPU), bfloat16, ...")
    gen.add_argument(
        "--allow-code-execution",
        action="store_true",
        help="required: run model-written code in the sandbox (read codellama_hf/evaluation/sandbox.py)",
    )
    gen.add_argument("--workers", type=int, default=2, help="parallel sandbox workers (default 2)")
    gen.add_argument("--timeout", type=float, default=5.0, help="seconds per test run (default 5)")
    gen.add_argument("--chunk-size", type=int, default=32, help="questions per cached unit of work (default 32)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--overwrite", action="store_true", help="discard an earlier run in --out and start over")
    gen.set_defaults(func=_cli_generate)


def _generator(model: str | None, url: str | None, served: str | None, args) -> Generator:
    """One of the shared generation back ends (codellama_hf.generation) behind self-instruct's prompts."""
    if url:
        api = args.api or ("chat" if args.chat_template else "completions")
        return OpenAIGenerator(url, model=served, api=api, concurrency=args.concurrency)
    if args.backend == "openai":
        raise ValueError("--backend openai needs --url (and --question-url for a separate question server)")
    if args.backend == "vllm":
        return VLLMGenerator(model, dtype=args.dtype, seed=args.seed, chat=args.chat_template)
    return HFGenerator.from_pretrained(model, dtype=args.dtype, batch_size=args.batch_size, chat=args.chat_template)


def _cli_generate(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from codellama_hf.evaluation.sandbox import require_opt_in

    require_opt_in(args.allow_code_execution)
    defaults = SelfInstructConfig(out_dir=args.out)
    config = SelfInstructConfig(
        out_dir=args.out,
        question_requests=args.question_requests,
        questions_file=args.questions_file,
        max_questions=args.max_questions,
        solutions=args.solutions,
        timeout=args.timeout,
        workers=args.workers,
        chunk_size=args.chunk_size,
        seed=args.seed,
        question_sampling=replace(defaults.question_sampling, max_new_tokens=args.question_max_new_tokens),
        test_sampling=replace(defaults.test_sampling, max_new_tokens=args.max_new_tokens),
        solution_sampling=replace(
            defaults.solution_sampling,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
        ),
    )
    code = _generator(args.model, args.url, args.served_model, args)
    question = None
    if args.question_model or args.question_url:
        question = _generator(args.question_model, args.question_url, args.question_served_model, args)
    summary = generate_self_instruct(
        config, code, question, allow_code_execution=args.allow_code_execution, overwrite=args.overwrite
    )
    table = Table(title=f"self-instruct: {args.out}", show_header=False)
    for key, value in summary.items():
        table.add_row(key, json.dumps(value) if isinstance(value, dict) else str(value))
    Console(highlight=False).print(table)
    return 0
