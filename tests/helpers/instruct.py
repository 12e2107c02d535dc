"""Shared by the instruct tests: fixtures and helpers."""

from __future__ import annotations

import json
import re
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import datasets
import pytest

from codellama_hf.selfinstruct.pipeline import (
    DATASET_DIR,
    EMPTY,
    ERROR,
    ITEMS_FILE,
    PASSED,
    PLOT_FILE,
    SUMMARY_FILE,
    SYNTAX,
    TIMEOUT,
    WRONG,
)
from codellama_hf.selfinstruct.prompts import (
    QUESTIONS_REQUEST,
    parse_tests,
)
from tests.helpers.openai_server import JSONHandler

QUESTIONS_ANSWER = """
1. Write a function add(a, b) that returns the sum of two numbers.
2. Write a function is_even(n) that tells whether n is even.
3. Write a function factorial(n) that returns the product 1 * 2 * ... * n.
4. Write a function that
   does something nobody specified.
5. Write a function add(a, b) that returns the sum of two numbers.
"""

ADD, EVEN, FACT, VAGUE = (
    "Write a function add(a, b) that returns the sum of two numbers.",
    "Write a function is_even(n) that tells whether n is even.",
    "Write a function factorial(n) that returns the product 1 * 2 * ... * n.",
    "Write a function that does something nobody specified.",
)

TESTS = {
    ADD: "\n[TESTS]\n# Test case 1:\nassert add(1, 2) == 3\n# Test case 2:\nassert add(-1, 1) == 0\n[/TESTS]",
    EVEN: "\n[TESTS]\n# Test case 1:\nassert is_even(2)\n# Test case 2:\nassert not is_even(3)\n",  # cut by stop
    FACT: "\n[TESTS]\n# Test case 1:\nassert factorial(0) == 1\n# Test case 2:\nassert factorial(5) == 120\n[/TESTS]",
    VAGUE: "I cannot write tests for that.",
}

SOLUTIONS = {  # sample index -> completion; what the judge must say about it
    ADD: [
        ("\n[PYTHON]\ndef add(a, b):\n    return a - b\n[/PYTHON]", WRONG),
        ("\n[PYTHON]\ndef add(a, b):\n    return (a + b) / 0\n[/PYTHON]", ERROR),
        ("\n[PYTHON]\ndef add(a, b):\n    return a + b\n", PASSED),  # the first correct one: kept
        ("\n[PYTHON]\n```python\ndef add(a, b):\n    return b + a\n```\n[/PYTHON]", PASSED),
    ],
    EVEN: [
        ("\n[PYTHON]\ndef is_even(n):\n    while True:\n        pass\n[/PYTHON]", TIMEOUT),
        ("\n[PYTHON]\nimport os\nos._exit(3)\n[/PYTHON]", ERROR),
        ("\n[PYTHON]\ndef is_even(n):\n    return n % 2 == 0\n[/PYTHON]", PASSED),
        ("\n[PYTHON]\ndef is_even(n) return n % 2 == 0\n[/PYTHON]", SYNTAX),
    ],
    FACT: [
        ("\n[PYTHON]\ndef factorial(n):\n    return n\n[/PYTHON]", WRONG),
        ("\n[PYTHON]\n[/PYTHON]", EMPTY),
        ("\n[PYTHON]\ndef factorial(n):\n    return n * factorial(n)\n[/PYTHON]", ERROR),
        ("\n[PYTHON]\ndef factorial(n):\n    return 1\n[/PYTHON]", WRONG),
    ],
}

KEPT = {ADD: 2, EVEN: 2}


class Scripted:
    """A deterministic stand-in for the models: real answers (right, wrong, hanging, crashing code) by question."""

    def __init__(self, fail_on: str | None = None):
        self.calls: list[tuple[str, tuple]] = []
        self.fail_on = fail_on

    def answer(self, text: str, n: int, offset: int = 0) -> list[str]:
        if QUESTIONS_REQUEST in text:
            kind, key = "questions", None
        else:
            kind = "solutions" if "[PYTHON]" in text else "tests"
            key = re.findall(r"Problem: (.*)", text)[-1]
        self.calls.append((kind, key))
        if key is not None and key == self.fail_on:
            raise RuntimeError(f"simulated crash on {key!r}")
        if kind == "questions":
            return [QUESTIONS_ANSWER if sum(k == "questions" for k, _ in self.calls) == 1 else ""] * n
        if kind == "tests":
            return [TESTS[key]] * n
        shown = re.findall(r"Test: (.*)", text)[-1]
        assert shown == parse_tests(TESTS[key])[0], "the solution prompt shows the first generated test"
        return [SOLUTIONS[key][i % len(SOLUTIONS[key])][0] for i in range(offset, offset + n)]


def check_run(out: Path, summary: dict) -> None:
    """The exact outcome of the script: first correct solution kept, every other one explained."""
    assert summary["question_requests"] == 2 and summary["question_requests_without_questions"] == 1
    assert (summary["questions_generated"], summary["duplicates_removed"], summary["questions"]) == (5, 1, 4)
    assert summary["questions_without_tests"] == 1
    assert summary["questions_kept"] == 2 and summary["questions_without_passing_solution"] == 1
    assert summary["solutions"] == {PASSED: 3, WRONG: 3, ERROR: 3, TIMEOUT: 1, SYNTAX: 1, EMPTY: 1}
    assert summary["first_passing_solution"] == {"2": 2}
    assert json.loads((out / SUMMARY_FILE).read_text()) == summary
    assert (out / PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    items = {row["question"]: row for row in map(json.loads, (out / ITEMS_FILE).read_text().splitlines())}
    assert set(items) == {ADD, EVEN, FACT, VAGUE}
    assert items[VAGUE]["skipped"] == "no_tests" and items[VAGUE]["solutions"] == []
    for question, script in SOLUTIONS.items():
        assert [o["status"] for o in items[question]["outcomes"]] == [status for _, status in script]
        assert items[question]["kept"] == KEPT.get(question)
    assert "ZeroDivisionError" in items[ADD]["outcomes"][1]["detail"]
    assert "RecursionError" in items[FACT]["outcomes"][2]["detail"]
    assert "AssertionError" in items[ADD]["outcomes"][0]["detail"]

    dataset = datasets.load_from_disk(str(out / DATASET_DIR))
    assert dataset["question"] == [ADD, EVEN]  # question order
    rows = {row["question"]: row for row in dataset}
    assert rows[ADD]["solution"] == "def add(a, b):\n    return a + b" and rows[ADD]["solution_index"] == 2
    assert rows[ADD]["tests"] == ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]
    assert rows[EVEN]["outcomes"] == [TIMEOUT, ERROR, PASSED, SYNTAX]
    assert rows[ADD]["messages"] == [
        {"role": "user", "content": ADD},
        {"role": "assistant", "content": "[PYTHON]\ndef add(a, b):\n    return a + b\n[/PYTHON]"},
    ]


class FakeServer:
    """/v1/models, /v1/completions and /v1/chat/completions answered by the script; `max_choices` mimics TGI."""

    def __init__(self, max_choices: int | None = None):
        script, self.requests, self.max_choices, served = Scripted(), [], max_choices, {}
        server = self

        class Handler(JSONHandler):
            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": "scripted-7b", "object": "model"}]})

            def do_POST(self):
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append((self.path, payload))
                if payload["model"] != "scripted-7b":
                    return self._send(404, {"error": f"model {payload['model']} not found"})
                chat = self.path == "/v1/chat/completions"
                text = "\n".join(m["content"] for m in payload["messages"]) if chat else payload["prompt"]
                n = min(payload["n"], server.max_choices or payload["n"])
                texts = script.answer(text, n, served.get(text, 0))  # a new request gets new samples
                served[text] = served.get(text, 0) + n
                choices = [
                    {"index": i, **({"message": {"role": "assistant", "content": t}} if chat else {"text": t})}
                    for i, t in enumerate(texts)
                ]
                self._send(200, {"choices": choices})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    fake = FakeServer()
    yield fake
    fake.close()
