"""Shared by the instruct_sft tests: helpers."""

from __future__ import annotations

from codellama_hf.selfinstruct.prompts import solution_message

CODE = "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n"

GOOD = [
    [{"role": "user", "content": "Write fib(n)."}, {"role": "assistant", "content": solution_message(CODE)}],
    [
        {"role": "system", "content": "Answer with code only."},
        {"role": "user", "content": "Reverse a list `xs`."},
        {"role": "assistant", "content": "xs[::-1]"},
        {"role": "user", "content": "In place?"},
        {"role": "assistant", "content": "xs.reverse()"},
    ],
    [
        {"role": "user", "content": "Add 2 and 3."},
        {"role": "assistant", "content": "5"},
        {"role": "user", "content": "A trailing question is dropped."},
    ],
]
