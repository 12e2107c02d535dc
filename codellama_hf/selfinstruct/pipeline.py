"""The resumable self-instruct run: questions -> tests -> solutions -> sandbox -> dataset, summary and plot.

Work is cached as it finishes (questions.jsonl, items.jsonl; settings.json guards against resuming with other
settings). Solutions are judged by running the question's tests in the sandbox; the first passing solution is kept
and the others' outcomes (wrong answer, error, timeout, syntax error, empty) are counted for the summary.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from codellama_hf.io import atomic_file, changed_settings, write_json
from codellama_hf.selfinstruct.generators import Generator, Sampling
from codellama_hf.selfinstruct.prompts import (
    parse_questions,
    parse_solution,
    parse_tests,
    parses_as_python,
    questions_prompt,
    solution_message,
    solution_prompt,
    tests_prompt,
)

logger = logging.getLogger(__name__)

# Judging solutions in the sandbox

PASSED, WRONG, ERROR, TIMEOUT, SYNTAX, EMPTY = "passed", "wrong_answer", "error", "timeout", "syntax_error", "empty"
OUTCOMES = (PASSED, WRONG, ERROR, TIMEOUT, SYNTAX, EMPTY)
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning)|[A-Z]\w+)(?::|$)")


def judge_program(solution: str, tests: Sequence[str]) -> str:
    return f"{solution}\n\n\n" + "\n".join(tests) + "\n"


def classify(result) -> tuple[str, str]:
    """(outcome, detail) for a sandbox Result: an AssertionError is a wrong answer, any other failure an error."""
    from codellama_hf.evaluation import sandbox

    if result.status == sandbox.PASSED:
        return PASSED, ""
    if result.status == sandbox.TIMEOUT:
        return TIMEOUT, result.detail
    last = next((line for line in reversed(result.stderr.strip().splitlines()) if _EXCEPTION_LINE.match(line)), "")
    if last.startswith("AssertionError"):
        return WRONG, last[:300]
    return ERROR, (last or result.detail)[:300]


# The self-instruct pipeline (resumable)

QUESTIONS_FILE, ITEMS_FILE, SETTINGS_FILE = "questions.jsonl", "items.jsonl", "settings.json"
DATASET_DIR, SUMMARY_FILE, PLOT_FILE = "dataset", "summary.json", "summary.png"


@dataclass
class SelfInstructConfig:
    out_dir: Path
    question_requests: int = 1240  # x 50 questions per answer = the paper's 62,000 questions
    questions_file: Path | None = None  # your own questions (one per line, or JSONL with "question"): no step 1
    max_questions: int | None = None  # only the first N unique questions (trial runs)
    solutions: int = 10
    timeout: float = 5.0  # seconds per test program
    workers: int = 2  # sandbox workers
    chunk_size: int = 32  # questions generated, run and cached together
    seed: int = 0
    question_sampling: Sampling = Sampling(2048, 0.6, 0.9, ("[INST]",))
    test_sampling: Sampling = Sampling(512, 0.0, 1.0, ("[/TESTS]", "[INST]"))
    solution_sampling: Sampling = Sampling(512, 0.8, 0.95, ("[/PYTHON]", "[INST]"))

    def __post_init__(self):
        self.out_dir = Path(self.out_dir)
        for name in ("question_requests", "solutions", "workers", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be at least 1")
        if not self.timeout > 0:
            raise ValueError(f"timeout={self.timeout}: must be positive")
        if self.solutions > 1 and self.solution_sampling.temperature <= 0:
            raise ValueError(f"{self.solutions} solutions per question need sampling (temperature > 0)")
        if self.questions_file is not None and not Path(self.questions_file).is_file():
            raise FileNotFoundError(f"questions file {self.questions_file}: no such file")


def _seed(base: int, *key) -> int:
    return int.from_bytes(hashlib.blake2b(repr((base, *key)).encode(), digest_size=4).digest(), "little") >> 1


def question_id(question: str) -> str:
    return hashlib.sha256(question.encode("utf-8")).hexdigest()[:16]


class _Jsonl:
    """An append-only JSON-lines cache; a line cut short by an interrupted run is dropped (its item is redone)."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict] = []
        if path.exists():
            raw = path.read_bytes()
            complete = raw[: raw.rfind(b"\n") + 1]
            if len(complete) != len(raw):
                logger.warning("%s: dropping an incomplete last line (interrupted run); that item is redone", path)
                path.write_bytes(complete)
            for number, line in enumerate(complete.decode("utf-8").splitlines(), 1):
                try:
                    self.rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(
                        f"{path}:{number}: not JSON ({err}); the cache was edited or damaged: fix or "
                        "delete that line (its item is then redone)"
                    ) from None

    def append(self, rows: Iterable[dict]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                self.rows.append(row)
            f.flush()
            os.fsync(f.fileno())


def _settings(config: SelfInstructConfig, question_generator: Generator | None, code_generator: Generator) -> dict:
    """What decides the items: a restart must use the same, or finished items would mix two runs."""
    prompts = [questions_prompt().text, tests_prompt("{q}").text, solution_prompt("{q}", "{t}").text]
    questions = None
    if config.questions_file is not None:
        questions = hashlib.sha256(Path(config.questions_file).read_bytes()).hexdigest()[:16]
    return {
        "prompts": hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:16],
        "questions_file": questions,
        "question_generator": question_generator.name if question_generator else None,
        "code_generator": code_generator.name,
        "solutions": config.solutions,
        "timeout": config.timeout,
        "seed": config.seed,
        "question_sampling": asdict(config.question_sampling),
        "test_sampling": asdict(config.test_sampling),
        "solution_sampling": asdict(config.solution_sampling),
    }


def _check_settings(out: Path, settings: dict, overwrite: bool) -> None:
    path = out / SETTINGS_FILE
    if path.exists() and not overwrite:
        detail = changed_settings(json.loads(path.read_text()), settings)
        if detail:
            raise ValueError(
                f"{out} holds a run with other settings ({detail}); use another --out, the same "
                "settings to resume, or --overwrite to start over"
            )
        return
    if overwrite:
        for name in (QUESTIONS_FILE, ITEMS_FILE):
            (out / name).unlink(missing_ok=True)
    write_json(path, settings)


def _read_questions_file(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix == ".jsonl":
        questions = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                questions.append(json.loads(line)["question"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(f"{path}:{number}: expected a JSON object with a 'question' field") from None
        return questions
    return [line.strip() for line in lines if line.strip()]


def _generate_questions(config: SelfInstructConfig, generator: Generator, out: Path) -> list[dict]:
    """Step 1: `question_requests` answers to Fig. 10, each parsed into questions; cached per request."""
    cache = _Jsonl(out / QUESTIONS_FILE)
    done = {row["request"] for row in cache.rows}
    todo = [i for i in range(config.question_requests) if i not in done]
    with tqdm(total=config.question_requests, initial=len(done), desc="questions", unit="request") as bar:
        for start in range(0, len(todo), config.chunk_size):
            batch = todo[start : start + config.chunk_size]
            answers = generator.complete(
                [questions_prompt()] * len(batch),
                n=1,
                sampling=config.question_sampling,
                seed=_seed(config.seed, "questions", batch[0]),
            )
            rows = [
                {"request": i, "text": a[0], "questions": parse_questions(a[0])}
                for i, a in zip(batch, answers, strict=False)
            ]
            for row in rows:
                if not row["questions"]:
                    logger.info("question request %d gave no numbered questions: skipped", row["request"])
            cache.append(rows)
            bar.update(len(batch))
    return sorted(cache.rows, key=lambda row: row["request"])


def _judge_chunk(questions: list[str], generator: Generator, sandbox, config: SelfInstructConfig, ordinal: int):
    """Steps 2-4 for a chunk of questions: tests, solutions, the sandbox; one finished item per question."""
    from codellama_hf.evaluation.sandbox import Program

    test_answers = generator.complete(
        [tests_prompt(q) for q in questions],
        n=1,
        sampling=config.test_sampling,
        seed=_seed(config.seed, "tests", ordinal),
    )
    tests = [parse_tests(answer[0]) for answer in test_answers]
    tested = [i for i, t in enumerate(tests) if t]
    solution_answers = generator.complete(
        [solution_prompt(questions[i], tests[i][0]) for i in tested],
        n=config.solutions,
        sampling=config.solution_sampling,
        seed=_seed(config.seed, "solutions", ordinal),
    )
    items = [
        {
            "id": question_id(q),
            "question": q,
            "tests": t,
            "tests_text": a[0],
            "solutions": [],
            "outcomes": [],
            "kept": None,
            "skipped": None if t else "no_tests",
        }
        for q, t, a in zip(questions, tests, test_answers, strict=False)
    ]
    programs, slots = [], []
    for i, answers in zip(tested, solution_answers, strict=False):
        for j, answer in enumerate(answers):
            code = parse_solution(answer)
            items[i]["solutions"].append(code)
            items[i]["outcomes"].append(None)
            if not code.strip():
                items[i]["outcomes"][j] = {"status": EMPTY, "detail": "no code between [PYTHON] tags"}
            elif not parses_as_python(code):
                items[i]["outcomes"][j] = {"status": SYNTAX, "detail": "the solution does not parse"}
            else:
                programs.append(Program(source=judge_program(code, tests[i]), timeout=config.timeout))
                slots.append((i, j))
    for (i, j), result in zip(slots, sandbox.run(programs), strict=False):
        status, detail = classify(result)
        items[i]["outcomes"][j] = {"status": status, "detail": detail}
    for item in items:
        item["kept"] = next((j for j, o in enumerate(item["outcomes"]) if o["status"] == PASSED), None)
        if item["skipped"]:
            logger.info("question %s: no test could be parsed from the generated tests: skipped", item["id"])
    return items


def generate_self_instruct(
    config: SelfInstructConfig,
    code_generator: Generator,
    question_generator: Generator | None = None,
    *,
    allow_code_execution: bool = False,
    overwrite: bool = False,
) -> dict:
    """Run (or resume) the self-instruct pipeline into `config.out_dir`; returns the summary (also summary.json).

    `question_generator` answers Fig. 10 (paper: Llama 2 70B); default: `code_generator` (paper: Code Llama 7B),
    which writes tests and solutions. Not needed with `config.questions_file`.
    """
    from codellama_hf.evaluation.sandbox import Sandbox, require_opt_in

    require_opt_in(allow_code_execution)  # before any generation: the run would stop at its first solution
    out = config.out_dir
    out.mkdir(parents=True, exist_ok=True)
    question_generator = None if config.questions_file else (question_generator or code_generator)
    _check_settings(out, _settings(config, question_generator, code_generator), overwrite)

    if config.questions_file:
        requests = [{"request": 0, "text": "", "questions": _read_questions_file(Path(config.questions_file))}]
    else:
        requests = _generate_questions(config, question_generator, out)
    generated = [q.strip() for row in requests for q in row["questions"] if q.strip()]
    unique = list(dict.fromkeys(generated))  # exact duplicates removed, first occurrence kept
    selected = unique[: config.max_questions] if config.max_questions is not None else unique

    cache = _Jsonl(out / ITEMS_FILE)
    done = {row["id"] for row in cache.rows}
    todo = [q for q in selected if question_id(q) not in done]
    if todo:
        with (
            Sandbox(workers=config.workers, allow_code_execution=allow_code_execution) as sandbox,
            tqdm(
                total=len(selected), initial=len(selected) - len(todo), desc="tests+solutions", unit="question"
            ) as bar,
        ):
            for start in range(0, len(todo), config.chunk_size):
                chunk = todo[start : start + config.chunk_size]
                cache.append(_judge_chunk(chunk, code_generator, sandbox, config, selected.index(chunk[0])))
                bar.update(len(chunk))
                bar.set_postfix(kept=sum(row["kept"] is not None for row in cache.rows))
    by_id = {row["id"]: row for row in cache.rows}
    items = [by_id[question_id(q)] for q in selected]
    summary = summarize(requests, generated, unique, items, config)
    asked = question_generator.name if question_generator else str(config.questions_file)
    summary["generators"] = {"questions": asked, "code": code_generator.name}
    write_dataset(items, out / DATASET_DIR, generator=code_generator.name)
    summary["dataset"] = str(out / DATASET_DIR)
    write_json(out / SUMMARY_FILE, summary)
    plot_summary(summary, out / PLOT_FILE)
    return summary


def summarize(requests: list[dict], generated: list[str], unique: list[str], items: list[dict], config) -> dict:
    outcomes = Counter(o["status"] for item in items for o in item["outcomes"])
    first = Counter(item["kept"] for item in items if item["kept"] is not None)
    run = sum(outcomes[s] for s in (PASSED, WRONG, ERROR, TIMEOUT))
    kept = sum(first.values())
    return {
        "question_requests": len(requests) if not config.questions_file else 0,
        "question_requests_without_questions": sum(not row["questions"] for row in requests),
        "questions_generated": len(generated),
        "duplicates_removed": len(generated) - len(unique),
        "questions": len(items),
        "questions_without_tests": sum(item["skipped"] == "no_tests" for item in items),
        "tests_per_question": round(float(np.mean([len(i["tests"]) for i in items if i["tests"]] or [0])), 2),
        "questions_kept": kept,
        "questions_without_passing_solution": sum(item["kept"] is None and not item["skipped"] for item in items),
        "solutions": {status: outcomes.get(status, 0) for status in OUTCOMES},
        "solutions_run": run,
        "pass_rate": round(outcomes[PASSED] / run, 4) if run else None,
        "first_passing_solution": {str(k): first[k] for k in sorted(first)},
    }


def _features():
    import datasets

    text = datasets.Value("string")
    return datasets.Features(
        {
            "id": text,
            "question": text,
            "tests": datasets.List(text),
            "solution": text,
            "messages": datasets.List({"role": text, "content": text}),
            "solution_index": datasets.Value("int32"),
            "solutions_tried": datasets.Value("int32"),
            "outcomes": datasets.List(text),
            "generator": text,
        }
    )


def write_dataset(items: list[dict], out: Path, *, generator: str) -> Path:
    """The kept triplets as a `datasets` dataset with the training dialog in `messages`, written atomically."""
    import datasets

    from codellama_hf.corpus.embedded import save_atomic

    rows = [
        {
            "id": item["id"],
            "question": item["question"],
            "tests": item["tests"],
            "solution": item["solutions"][item["kept"]],
            "messages": [
                {"role": "user", "content": item["question"]},
                {"role": "assistant", "content": solution_message(item["solutions"][item["kept"]])},
            ],
            "solution_index": item["kept"],
            "solutions_tried": len(item["solutions"]),
            "outcomes": [o["status"] for o in item["outcomes"]],
            "generator": generator,
        }
        for item in items
        if item["kept"] is not None
    ]
    features = _features()
    columns = {name: [row[name] for row in rows] for name in features}  # from_list([]) would lose the columns
    return save_atomic(datasets.Dataset.from_dict(columns, features=features), out, overwrite=True)


def plot_summary(summary: dict, path: Path) -> None:
    """Solution outcomes and which sample passed first, as a PNG beside the dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_out, ax_first) = plt.subplots(1, 2, figsize=(10, 3.5))
    names = list(summary["solutions"])
    ax_out.bar(names, [summary["solutions"][n] for n in names])
    ax_out.set(title="solution outcomes", ylabel="solutions")
    ax_out.tick_params(axis="x", rotation=30)
    first = summary["first_passing_solution"]
    ax_first.bar([str(k) for k in first], list(first.values()))
    ax_first.set(
        title=f"first passing sample ({summary['questions_kept']} of {summary['questions']} kept)",
        xlabel="sample index",
        ylabel="questions",
    )
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
