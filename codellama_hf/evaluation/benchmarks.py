"""What every execution benchmark provides: problems to prompt with, and the test program for a completion.

Task names (CLI and results files): humaneval, mbpp, multiple-{py,cpp,java,cs}, humaneval-infill-{single,multi}.
Tasks scored by the model itself rather than by execution: key-retrieval, perplexity (long_context.py) and
cross-file (crossfile.py: infilling with and without the repository context).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from codellama_hf.evaluation.sandbox import Program

EXECUTION_TASKS = (
    "humaneval",
    "mbpp",
    "multiple-py",
    "multiple-cpp",
    "multiple-java",
    "multiple-cs",
    "humaneval-infill-single",
    "humaneval-infill-multi",
)


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str  # what the model continues; for infilling, the prefix
    stop: tuple[str, ...] = ()
    suffix: str | None = None  # infilling only
    reference: str | None = None  # a known-correct completion, when the benchmark has one
    data: Mapping[str, Any] = field(default_factory=dict, repr=False)  # fields the test program is built from


class Benchmark(ABC):
    """Subclasses set `name`, load `problems`, and build `program(problem, completion, timeout)`."""

    name: str
    language = "python"
    timeout_floor = 3.0  # seconds; evalplus-style calibration raises it for slow references
    infilling = False
    # Prompt forms this benchmark can be run with, its own (bigcode's) default first; see evaluation/prompts.py.
    prompt_forms: tuple[str, ...] = ("unstripped", "strip")

    def __init__(self):
        self.problems: list[Problem] = []

    @abstractmethod
    def program(self, problem: Problem, completion: str, timeout: float) -> Program:
        """The program that runs `completion` against `problem`'s tests."""

    def missing_toolchain(self) -> str | None:
        """Why this benchmark cannot be executed on this machine (then it is reported skipped), or None."""
        return None

    def by_id(self) -> dict[str, Problem]:
        return {p.task_id: p for p in self.problems}


def get_benchmark(name: str, **options) -> Benchmark:
    """Build a benchmark by task name; options: mbpp `source`, multiple `source`."""
    if name == "humaneval":
        from codellama_hf.evaluation.humaneval import HumanEval

        return HumanEval()
    if name.startswith("humaneval-infill-"):
        from codellama_hf.evaluation.humaneval import HumanEvalInfilling

        return HumanEvalInfilling(name.removeprefix("humaneval-infill-"))
    if name == "mbpp":
        from codellama_hf.evaluation.mbpp import MBPP

        return MBPP(**options)
    if name.startswith("multiple-"):
        from codellama_hf.evaluation.multipl_e import MultiPLE

        return MultiPLE(name.removeprefix("multiple-"), **options)
    raise ValueError(f"unknown execution task {name!r}; choose one of {', '.join(EXECUTION_TASKS)}")
