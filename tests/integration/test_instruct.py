"""Self-instruct with unit-test filtering: prompts, parsing, the sandboxed judge, resuming, HTTP and HF generators."""

import json

import pytest

from codellama_hf import cli
from codellama_hf.selfinstruct.pipeline import (
    SUMMARY_FILE,
)
from tests.helpers import run_cli
from tests.helpers.instruct import (
    check_run,
)


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
