"""Evaluation: a sandbox for model-written code, pass@k, the paper's benchmarks, long context, reports.

Modules: sandbox (run_programs, Program, Result, Sandbox, Limits), passk, benchmarks (HumanEval, infilling, MBPP,
MultiPL-E via get_benchmark), scoring (score a samples JSONL), long_context, runner, report, options (the settings of
`codellama-hf evaluate` and recipes/evaluate.py). Generation itself lives in codellama_hf.generation.
"""

from codellama_hf.evaluation.benchmarks import Benchmark, Problem, get_benchmark
from codellama_hf.evaluation.passk import estimate_pass_at_k, pass_at_k
from codellama_hf.evaluation.sandbox import Limits, Program, Result, Sandbox, calibrated_timeout, run_programs

__all__ = [
    "Benchmark",
    "Limits",
    "Problem",
    "Program",
    "Result",
    "Sandbox",
    "calibrated_timeout",
    "estimate_pass_at_k",
    "get_benchmark",
    "pass_at_k",
    "run_programs",
]
