"""Self-instruct with unit-test filtering: prompts, parsing, the sandboxed judge, resuming, HTTP and HF generators."""

import json
import socket

import pytest

from codellama_hf import cli
from codellama_hf.chat import CHAT_TEMPLATE
from codellama_hf.selfinstruct.generators import EndpointError, HFGenerator, OpenAIGenerator, Sampling
from codellama_hf.selfinstruct.pipeline import (
    ITEMS_FILE,
    SelfInstructConfig,
    generate_self_instruct,
)
from codellama_hf.selfinstruct.prompts import (
    parse_questions,
    parse_solution,
    parse_tests,
    questions_prompt,
    solution_prompt,
)
from codellama_hf.selfinstruct.prompts import (
    tests_prompt as unit_tests_prompt,
)
from tests.helpers.instruct import (
    ADD,
    EVEN,
    FACT,
    QUESTIONS_ANSWER,
    VAGUE,
    FakeServer,
    Scripted,
    check_run,
)


class ScriptedGenerator(Scripted):
    name = "scripted"

    def complete(self, prompts, *, n, sampling, seed):
        return [self.answer(p.text, n) for p in prompts]


def config(out, **overrides):
    settings = {"question_requests": 2, "solutions": 4, "timeout": 1.0, "workers": 2, "chunk_size": 8}
    return SelfInstructConfig(out_dir=out, **{**settings, **overrides})


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
