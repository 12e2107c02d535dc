"""Self-instruct with unit-test filtering: prompts, parsing, the sandboxed judge, resuming, HTTP and HF generators."""

import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import datasets
import pytest

from codellama_hf import cli
from codellama_hf.chat import CHAT_TEMPLATE
from codellama_hf.selfinstruct.generators import EndpointError, HFGenerator, OpenAIGenerator, Sampling
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
    SelfInstructConfig,
    generate_self_instruct,
)
from codellama_hf.selfinstruct.prompts import (
    QUESTIONS_REQUEST,
    parse_questions,
    parse_solution,
    parse_tests,
    questions_prompt,
    solution_prompt,
)
from codellama_hf.selfinstruct.prompts import (
    tests_prompt as unit_tests_prompt,
)
from tests.conftest import run_cli

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


class ScriptedGenerator(Scripted):
    name = "scripted"

    def complete(self, prompts, *, n, sampling, seed):
        return [self.answer(p.text, n) for p in prompts]


def config(out, **overrides):
    settings = {"question_requests": 2, "solutions": 4, "timeout": 1.0, "workers": 2, "chunk_size": 8}
    return SelfInstructConfig(out_dir=out, **{**settings, **overrides})


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


def test_prompts_are_the_papers_figures():
    assert questions_prompt().text == (
        "[INST] Write 50 programming interview questions of easy and medium complexity. Provide questions on a "
        "diverse range of subjects, and make sure no two questions are alike. Make sure the problems can be solved "
        "with a single standalone Python function using standard libraries. [/INST]"
    )
    tests = unit_tests_prompt("Reverse a string.")
    assert tests.text.startswith("[INST] Your task is to write 5 tests")
    assert tests.text.endswith(
        "[/INST]\n[TESTS]\n# Test case 1:\nassert get_unique_elements([]) == []\n# Test case 2:\nassert "
        "get_unique_elements([1]) == [1]\n# Test case 3:\nassert get_unique_elements([1, 2, 3, 2, 1]) == [1, 2, 3]\n"
        "[/TESTS]\n[INST] Problem: Reverse a string.\n[/INST]"
    )
    solution = solution_prompt("Reverse a string.", "assert rev('ab') == 'ba'")
    assert "[/PYTHON]\n[INST] Problem: Reverse a string.\nTest: assert rev('ab') == 'ba'\n[/INST]" in solution.text
    assert [m["role"] for m in solution.messages] == ["user", "assistant", "user"]


def test_parsing_model_output():
    assert parse_questions(QUESTIONS_ANSWER + "[INST] 6. not a question") == [ADD, EVEN, FACT, VAGUE, ADD]
    assert parse_questions("Sure! Here are some:\n\n1) First one?\n2) Second.\n\nHope this helps.") == [
        "First one?",
        "Second.",
    ]
    assert parse_tests("[TESTS]\nassert f(1) == 2\nassert f(\n    2) == 3\nprint('x')\n[/TESTS]\nassert no") == [
        "assert f(1) == 2",
        "assert f(\n    2) == 3",
    ]
    assert parse_tests("[TESTS]\n# Test case 1:\nassert f(1) == 2\nassert f(2 ==\n") == ["assert f(1) == 2"]
    assert parse_tests("no tests here") == []
    assert parse_solution("[PYTHON]\ndef f():\n    return 1\n[/PYTHON]\ntrailing") == "def f():\n    return 1"
    assert parse_solution("\n[PYTHON]\n```py\nx = 1\n```\n") == "x = 1"
    assert parse_solution("[PYTHON]\n  \n[/PYTHON]") == ""


def test_pipeline_keeps_the_first_correct_solution(tmp_path):
    generator = ScriptedGenerator()
    summary = generate_self_instruct(config(tmp_path), generator, allow_code_execution=True)
    check_run(tmp_path, summary)
    # One batched call per step: 2 question requests, 4 test prompts, 3 solution prompts (the vague one has no tests).
    assert sorted(k for k, _ in generator.calls) == ["questions"] * 2 + ["solutions"] * 3 + ["tests"] * 4


def test_restart_does_not_redo_finished_items(tmp_path, caplog):
    with pytest.raises(RuntimeError, match="simulated crash"):
        generate_self_instruct(
            config(tmp_path, chunk_size=1), ScriptedGenerator(fail_on=FACT), allow_code_execution=True
        )
    finished = [json.loads(line)["question"] for line in (tmp_path / ITEMS_FILE).read_text().splitlines()]
    assert finished == [ADD, EVEN]
    with open(tmp_path / ITEMS_FILE, "a") as f:  # a run killed in the middle of writing a line
        f.write('{"id": "deadbeef", "quest')
    generator = ScriptedGenerator()
    summary = generate_self_instruct(config(tmp_path, chunk_size=1), generator, allow_code_execution=True)
    assert "incomplete last line" in caplog.text
    assert {key for _, key in generator.calls} == {FACT, VAGUE}  # questions cached; ADD and EVEN not redone
    check_run(tmp_path, summary)
    again = ScriptedGenerator()
    assert generate_self_instruct(config(tmp_path, chunk_size=1), again, allow_code_execution=True) == summary
    assert again.calls == []
    with pytest.raises(ValueError, match="other settings.*solutions: 4 -> 3"):
        generate_self_instruct(config(tmp_path, solutions=3), again, allow_code_execution=True)


def test_code_execution_needs_opt_in_before_any_generation(tmp_path, monkeypatch):
    monkeypatch.delenv("CODELLAMA_HF_ALLOW_CODE_EXECUTION", raising=False)
    generator = ScriptedGenerator()
    with pytest.raises(RuntimeError, match="refusing to execute model-written code"):
        generate_self_instruct(config(tmp_path), generator)
    assert generator.calls == []
    assert cli.main(["instruct", "generate", "--url", "http://127.0.0.1:9/v1", "--out", str(tmp_path)]) == 2


# ---------------------------------------------------------------------------------------------------------------
# OpenAI-compatible server on the loopback interface
# ---------------------------------------------------------------------------------------------------------------


class FakeServer:
    """/v1/models, /v1/completions and /v1/chat/completions answered by the script; `max_choices` mimics TGI."""

    def __init__(self, max_choices: int | None = None):
        script, self.requests, self.max_choices, served = Scripted(), [], max_choices, {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

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


@pytest.mark.slow
def test_cli_with_an_openai_compatible_server_resumes(server, tmp_path):
    args = [
        "instruct",
        "generate",
        "--url",
        server.url,
        "--out",
        str(tmp_path),
        "--allow-code-execution",
        "--question-requests",
        "2",
        "--solutions",
        "4",
        "--timeout",
        "1",
        "--workers",
        "2",
    ]
    done = run_cli(*args, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    check_run(tmp_path, json.loads((tmp_path / SUMMARY_FILE).read_text()))
    completions = [p for path, p in server.requests if path == "/v1/completions"]
    assert len(completions) == 2 + 4 + 3 and all(p["model"] == "scripted-7b" for p in completions)
    solution_requests = [p for p in completions if "[PYTHON]" in p["prompt"]]
    assert {(p["n"], p["temperature"], p["top_p"]) for p in solution_requests} == {(4, 0.8, 0.95)}
    assert {tuple(p["stop"]) for p in solution_requests} == {("[/PYTHON]", "[INST]")}
    seen = len(server.requests)
    assert cli.main(args) == 0  # the same command again, in this process
    assert len(server.requests) == seen  # nothing regenerated


def test_chat_api_and_servers_that_return_fewer_choices(tmp_path):
    fake = FakeServer(max_choices=1)
    try:
        generator = OpenAIGenerator(fake.url, api="chat", concurrency=3)
        assert generator.model == "scripted-7b"
        summary = generate_self_instruct(config(tmp_path), generator, allow_code_execution=True)
    finally:
        fake.close()
    check_run(tmp_path, summary)
    solution_requests = [p for path, p in fake.requests if "[PYTHON]" in json.dumps(p)]
    assert all(path == "/v1/chat/completions" for path, _ in fake.requests)
    assert sorted(p["n"] for p in solution_requests) == sorted([1, 2, 3, 4] * 3)  # asked again for the rest
    assert [m["role"] for m in solution_requests[0]["messages"]] == ["user", "assistant", "user"]


def test_unreachable_endpoint_is_a_clear_error(tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(EndpointError, match=f"cannot reach the OpenAI-compatible endpoint http://127.0.0.1:{port}/v1"):
        OpenAIGenerator(f"http://127.0.0.1:{port}/v1")
    fake = FakeServer()
    try:
        with pytest.raises(EndpointError, match="HTTP 404.*model nope not found"):
            OpenAIGenerator(fake.url, model="nope").complete([questions_prompt()], n=1, sampling=Sampling(16), seed=0)
    finally:
        fake.close()
    with pytest.raises(ValueError, match="base URL"):
        OpenAIGenerator("http://127.0.0.1:8000/v1/completions")


# ---------------------------------------------------------------------------------------------------------------
# A real (tiny, random) HF model through transformers
# ---------------------------------------------------------------------------------------------------------------


def test_tiny_hf_model_runs_the_pipeline_and_counts_what_it_skips(tmp_path, tiny_tokenizer, tiny_model_factory):
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"question": q}) + "\n" for q in (ADD, ADD)))
    tiny_tokenizer.chat_template = CHAT_TEMPLATE
    try:
        model = tiny_model_factory(len(tiny_tokenizer))
        for chat in (False, True):
            generator = HFGenerator(model, tiny_tokenizer, batch_size=4, chat=chat)
            short = Sampling(8, 0.0, 1.0, ("[/TESTS]",))
            run = config(
                tmp_path / f"chat{chat}",
                questions_file=questions,
                solutions=2,
                test_sampling=short,
                solution_sampling=Sampling(8, 0.8, 0.95, ("[/PYTHON]",)),
            )
            summary = generate_self_instruct(run, generator, allow_code_execution=True)
            assert (summary["questions"], summary["duplicates_removed"]) == (1, 1)
            assert (
                summary["questions_kept"]
                + summary["questions_without_passing_solution"]
                + summary["questions_without_tests"]
                == 1
            )
            items = [json.loads(line) for line in (run.out_dir / ITEMS_FILE).read_text().splitlines()]
            assert all(len(i["outcomes"]) == (0 if i["skipped"] else 2) for i in items)
            assert all(isinstance(i["tests_text"], str) for i in items)  # the model's real (random) answer
    finally:
        tiny_tokenizer.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        HFGenerator(model, tiny_tokenizer, chat=True)
