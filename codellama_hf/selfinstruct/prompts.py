"""Self-instruct prompts (paper, Appendix H: Figs. 10-12) and reading the model's answers.

The prompts are the paper's figures as text, as it prompted base Code Llama 7B; `Prompt.turns` keeps the same
exchange as chat turns for chat models. The readers are lenient about formatting (numbered lists, missing closing
tags) but keep only code that parses.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from dataclasses import dataclass

# Prompts (paper, Appendix H: Figs. 10-12)

QUESTIONS_REQUEST = (
    "Write 50 programming interview questions of easy and medium complexity. Provide questions on a diverse range "
    "of subjects, and make sure no two questions are alike. Make sure the problems can be solved with a single "
    "standalone Python function using standard libraries."
)
TESTS_REQUEST = (
    "Your task is to write 5 tests to check the correctness of a function that solves a programming problem.\n"
    "The tests must be between [TESTS] and [/TESTS] tags.\n"
    'You must write the comment "#Test case n:" on a separate line directly above each assert statement, where n '
    "represents the test case number, starting from 1 and increasing by one for each subsequent test case.\n"
)
SOLUTION_REQUEST = (
    "Your task is to write a Python function to solve a programming problem.\n"
    "The Python code must be between [PYTHON] and [/PYTHON] tags.\n"
    "You are given one example test from which you can infere the function signature.\n"  # sic, as in the paper
)
EXAMPLE_PROBLEM = "Write a Python function to get the unique elements of a list."
EXAMPLE_TEST = "assert get_unique_elements([1, 2, 3, 2, 1]) == [1, 2, 3]"
EXAMPLE_TESTS = (
    "[TESTS]\n# Test case 1:\nassert get_unique_elements([]) == []\n# Test case 2:\nassert get_unique_elements([1]) "
    f"== [1]\n# Test case 3:\n{EXAMPLE_TEST}\n[/TESTS]"
)
EXAMPLE_SOLUTION = "[PYTHON]\ndef get_unique_elements(my_list):\n    return list(set(my_list))\n[/PYTHON]"


@dataclass(frozen=True)
class Prompt:
    """One request: chat turns, and the same turns as the raw text the paper's figures show."""

    messages: tuple[dict, ...]
    text: str


def _prompt(turns: Sequence[tuple[str, str]], *, close: str) -> Prompt:
    """Figs. 11-12 end user turns with "\\n[/INST]" and put answers on their own line; Fig. 10 uses " [/INST]"."""
    messages = tuple({"role": role, "content": content} for role, content in turns)
    parts = [f"[INST] {content}{close}[/INST]" if role == "user" else content for role, content in turns]
    return Prompt(messages, "\n".join(parts))


def questions_prompt() -> Prompt:
    return _prompt([("user", QUESTIONS_REQUEST)], close=" ")


def tests_prompt(question: str) -> Prompt:
    return _prompt(
        [
            ("user", f"{TESTS_REQUEST}Problem: {EXAMPLE_PROBLEM}"),
            ("assistant", EXAMPLE_TESTS),
            ("user", f"Problem: {question}"),
        ],
        close="\n",
    )


def solution_prompt(question: str, test: str) -> Prompt:
    return _prompt(
        [
            ("user", f"{SOLUTION_REQUEST}Problem: {EXAMPLE_PROBLEM}\nTest: {EXAMPLE_TEST}"),
            ("assistant", EXAMPLE_SOLUTION),
            ("user", f"Problem: {question}\nTest: {test}"),
        ],
        close="\n",
    )


def solution_message(solution: str) -> str:
    """The assistant's answer in a training dialog: the code between the [PYTHON] tags of Fig. 12."""
    return f"[PYTHON]\n{solution}\n[/PYTHON]"


# Reading model output

_NUMBERED = re.compile(r"^\s*\d{1,3}\s*[.)]\s+(\S.*)$")


def _between(text: str, start: str, end: str) -> str:
    """Text after `start` (or from the beginning) up to `end` or a new [INST] turn (or the end)."""
    i = text.find(start)
    text = text[i + len(start) :] if i >= 0 else text
    for stop in (end, "[INST]"):
        j = text.find(stop)
        text = text[:j] if j >= 0 else text
    return text


def parse_questions(text: str) -> list[str]:
    """The items of a numbered list ("1. ...", "2) ..."); an item's continuation lines are joined to it."""
    questions, current = [], None
    for line in _between(text, "", "[/INST]").splitlines():
        match = _NUMBERED.match(line)
        if match or not line.strip():
            if current:
                questions.append(" ".join(current))
            current = [match[1].strip()] if match else None
        elif current is not None:
            current.append(line.strip())
    if current:
        questions.append(" ".join(current))
    return [q for q in questions if q]


def parse_tests(text: str) -> list[str]:
    """The assert statements between [TESTS] and [/TESTS] (the closing tag may have been cut by a stop sequence)."""
    block = _between(text, "[TESTS]", "[/TESTS]")
    try:
        tree = ast.parse(block)
    except SyntaxError:  # keep the asserts that stand on their own lines
        return [
            line.strip() for line in block.splitlines() if line.strip().startswith("assert") and parses_as_python(line)
        ]
    return [ast.get_source_segment(block, node) for node in tree.body if isinstance(node, ast.Assert)]


def parses_as_python(code: str) -> bool:
    try:
        ast.parse(code.strip())
    except SyntaxError:
        return False
    return True


def parse_solution(text: str) -> str:
    """The code between [PYTHON] and [/PYTHON], without a Markdown fence around it ("" when there is none)."""
    code = _between(text, "[PYTHON]", "[/PYTHON]").strip("\n")
    fenced = re.fullmatch(r"\s*```[\w+-]*\n(.*?)\n?```\s*", code, flags=re.DOTALL)
    return (fenced[1] if fenced else code).rstrip()
