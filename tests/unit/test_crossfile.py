"""Repository layout (headers, dependency order) and the cross-file infilling evaluation, on real files."""

from __future__ import annotations

import re
import sysconfig
from pathlib import Path

import pytest
import torch

from codellama_hf.evaluation.crossfile import build_tasks, evaluate_tasks, exact_match, middle_loss
from codellama_hf.repository import (
    dependencies,
    dependency_order,
    header,
    package_name,
    read_repository,
    render_file,
)
from codellama_hf.tokenizer import encode_infilling, infill_ids, infilling_prompt


def test_repository_reading_order_and_headers(repo):
    read = read_repository(repo)
    assert [f.path for f in read.files] == ["__init__.py", "report.py", "shapes.py", "units.py"]
    assert dict(read.skipped) == {"unreadable": 1, "not utf-8": 1}
    deps = dependencies(read, package_name(repo))
    assert deps == {"__init__.py": [], "report.py": ["shapes.py"], "shapes.py": [], "units.py": ["report.py"]}
    assert dependency_order(deps, deps) == ["__init__.py", "shapes.py", "report.py", "units.py"]
    # a cycle is broken by path order, and nothing is lost
    assert dependency_order(["b.py", "a.py"], {"a.py": ["b.py"], "b.py": ["a.py"]}) == ["a.py", "b.py"]
    assert header("pkg/a.py") == "# file: pkg/a.py\n"
    assert render_file("a.py", "x = 1") == "# file: a.py\nx = 1\n"
    assert render_file("a.py", "x = 1\n") == "# file: a.py\nx = 1\n"
    with pytest.raises(ValueError, match="line break"):
        header("a\nb.py")


def _split_context(context: str) -> list[tuple[str, str]]:
    """The (path, text) pairs a rendered context is made of."""
    parts = re.split(r"^# file: (.+)\n", context, flags=re.M)
    assert parts[0] == ""
    return list(zip(parts[1::2], parts[2::2], strict=True))


def _check_task(task, root: Path):
    text = (root / task.path).read_text()
    lines = text.splitlines(keepends=True)
    assert task.middle == lines[task.line - 1]
    rest = "".join(lines[: task.line - 1] + lines[task.line :])
    # the name is used on the line, defined in another file, and nowhere else in this one
    assert re.search(rf"\b{task.name}\b", task.middle)
    assert not re.search(rf"\b{task.name}\b", rest)
    assert not re.search(rf"\b{task.name}\b", task.prefix + task.suffix)
    assert task.defined_in != task.path and task.defined_in in task.context_files
    assert re.search(rf"^(def|class) {task.name}\b|^{task.name}\s*=", (root / task.defined_in).read_text(), re.M)
    # headers exact: the context is whole files of the repository, each after its header
    pieces = _split_context(task.context)
    assert [p for p, _ in pieces] == list(task.context_files)
    for path, body in pieces:
        assert body == (root / path).read_text()
    assert task.prefix.startswith(header(task.path))
    assert task.prefix[len(header(task.path)) :] + task.middle + task.suffix in text
    # the two variants differ only by the context in front of the prefix
    (with_prefix, with_suffix), (without_prefix, without_suffix) = task.prompt(True), task.prompt(False)
    assert with_suffix == without_suffix and with_prefix == task.context + without_prefix


def test_tasks_need_the_other_file(repo, tiny_tokenizer):
    tasks, dropped = build_tasks([repo], tiny_tokenizer, per_repository=10)
    found = {(t.path, t.name, t.defined_in) for t in tasks}
    assert found == {("report.py", "polygon_area", "shapes.py"), ("report.py", "Vector", "shapes.py")}
    for task in tasks:
        _check_task(task, repo)
    assert dropped == {"file unreadable": 1, "file not utf-8": 1}
    # deterministic by seed; a context budget smaller than the defining file drops the task, counted
    again, _ = build_tasks([repo], tiny_tokenizer, per_repository=10)
    assert again == tasks
    none, dropped = build_tasks([repo], tiny_tokenizer, context_tokens=10)
    assert none == [] and dropped["defining file longer than the context budget"] == 2


def test_tasks_from_a_standard_library_package(tiny_tokenizer):
    root = Path(sysconfig.get_paths()["stdlib"]) / "json"
    tasks, _ = build_tasks([root], tiny_tokenizer, per_repository=5, context_tokens=8192)
    assert tasks, "json's decoder uses scanner.make_scanner"
    for task in tasks:
        _check_task(task, root)
    assert any(t.name == "make_scanner" and t.defined_in == "scanner.py" for t in tasks)


def test_middle_loss_and_exact_match(repo, tiny_model, tiny_tokenizer):
    tasks, _ = build_tasks([repo], tiny_tokenizer, per_repository=10)
    task = tasks[0]
    ids = infill_ids(tiny_tokenizer)
    for with_context in (True, False):
        prefix, suffix = task.prompt(with_context)
        prompt = infilling_prompt(tiny_tokenizer, prefix, suffix)
        target = [*encode_infilling(tiny_tokenizer, task.middle), ids.eot]
        full = torch.tensor([prompt + target])
        labels = torch.tensor([[-100] * len(prompt) + target])
        with torch.no_grad():
            expected = tiny_model(input_ids=full, labels=labels).loss.item()  # HF shifts the labels itself
        assert middle_loss(tiny_model, tiny_tokenizer, prefix, task.middle, suffix) == pytest.approx(expected, 1e-5)
        assert middle_loss(tiny_model, tiny_tokenizer, prefix, task.middle, suffix, suffix_first=True) > 0
    result = evaluate_tasks(tiny_model, tiny_tokenizer, tasks, max_new_tokens=4)
    metrics = result["metrics"]
    assert set(metrics) == {
        "exact_match_with_context",
        "exact_match_without_context",
        "middle_loss_with_context",
        "middle_loss_without_context",
        "middle_loss_gain",
    }
    record = result["records"][0]
    assert record["loss_with_context"] == pytest.approx(
        middle_loss(tiny_model, tiny_tokenizer, task.prompt(True)[0], task.middle, task.suffix)
    )
    assert isinstance(record["completion_without_context"], str)
    assert exact_match(
        "    area = shapes.polygon_area(points)\n    return", "    area = shapes.polygon_area(points)\n"
    )
    assert not exact_match("    area = shapes.polygon_area(pts)", "    area = shapes.polygon_area(points)\n")
    with pytest.raises(ValueError, match="no cross-file tasks"):
        evaluate_tasks(tiny_model, tiny_tokenizer, [])
