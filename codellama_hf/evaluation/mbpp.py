"""MBPP, 3-shot, in the original MBPP prompt format (google-research mbpp/README.md; Code Llama paper §3).

Shots are task ids 2, 3 and 4; the test split is task ids 11-510. The data comes from the Hub dataset (config
"full") or from a local .jsonl/.json/.parquet file with the same fields (task_id, text, code, test_list,
test_setup_code), e.g. the original mbpp.jsonl. A local file may hold a subset of the test ids; it must hold the
three shots.
"""

from __future__ import annotations

from pathlib import Path

from codellama_hf.evaluation.benchmarks import Benchmark, Problem
from codellama_hf.evaluation.sandbox import Program

HUB_DATASET = "google-research-datasets/mbpp"
SHOT_IDS = (2, 3, 4)
TEST_IDS = range(11, 511)
FIELDS = ("task_id", "text", "code", "test_list")
STOP_WORDS = ("[DONE]",)


def format_example(row: dict, *, with_solution: bool) -> str:
    """`You are an expert Python programmer, and here is your task: {prompt} Your code should pass these tests:
    \\n\\n{tests}\\n[BEGIN]\\n{code}\\n[DONE]`, the query ending after [BEGIN]\\n."""
    tests = "\n".join(row["test_list"])
    head = (
        f"You are an expert Python programmer, and here is your task: {row['text']} "
        f"Your code should pass these tests:\n\n{tests}\n[BEGIN]\n"
    )
    return head + (f"{row['code']}\n[DONE]" if with_solution else "")


def load_rows(source: str) -> list[dict]:
    """All rows of MBPP from a local file (when `source` is an existing path) or from the Hub."""
    import datasets

    path = Path(source)
    if path.exists():
        kind = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}.get(path.suffix)
        if kind is None:
            raise ValueError(f"{path}: MBPP file must be .jsonl, .json or .parquet")
        try:
            data = datasets.load_dataset(kind, data_files=str(path), split="train")
        except Exception as err:
            raise ValueError(f"{path}: cannot read as MBPP {kind} ({err})") from None
        rows = list(data)
    else:
        try:
            splits = datasets.load_dataset(source, "full")
        except Exception as err:
            raise RuntimeError(
                f"could not load MBPP {source!r} from the Hub ({type(err).__name__}: {err}); "
                "pass a local MBPP .jsonl/.json/.parquet instead (CLI --mbpp-source FILE)"
            ) from None
        rows = [row for split in splits.values() for row in split]
    for row in rows:
        missing = [f for f in FIELDS if f not in row]
        if missing:
            raise ValueError(f"{source}: MBPP row {row.get('task_id', '?')} lacks field(s) {missing}")
    return rows


class MBPP(Benchmark):
    name = "mbpp"
    prompt_forms = ("unstripped", "strip")  # the MBPP README's 3-shot query ends after "[BEGIN]\n"

    def __init__(self, source: str = HUB_DATASET):
        super().__init__()
        rows = {int(row["task_id"]): row for row in load_rows(source)}
        missing = [i for i in SHOT_IDS if i not in rows]
        if missing:
            raise ValueError(f"{source}: MBPP data lacks the few-shot task ids {missing} (the shots are 2, 3, 4)")
        shots = "\n".join(format_example(rows[i], with_solution=True) for i in SHOT_IDS)
        tests = [rows[i] for i in TEST_IDS if i in rows]
        if not tests:
            raise ValueError(f"{source}: no MBPP test task ids (11-510) in the data")
        self.problems = [
            Problem(
                f"mbpp/{row['task_id']}",
                shots + "\n" + format_example(row, with_solution=False),
                STOP_WORDS,
                reference=row["code"],
                data=row,
            )
            for row in tests
        ]

    def program(self, problem: Problem, completion: str, timeout: float) -> Program:
        row = problem.data
        tests = "\n".join(row["test_list"])
        source = f"{completion}\n{row.get('test_setup_code') or ''}\n{tests}\n"
        return Program(source=source, timeout=timeout)
