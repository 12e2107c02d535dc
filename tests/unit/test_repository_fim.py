"""The repository-level FIM experiment's parts: synthetic repositories whose cross-file tasks need the other file,
and the paired statistics of the report."""

from __future__ import annotations

import re

import pytest

from codellama_hf.evaluation.crossfile import build_tasks
from codellama_hf.evaluation.synthetic_repositories import repository, write_repositories
from experiments.repository_fim.experiment import _paired_gap, summarize


def test_synthetic_repositories_are_deterministic_and_their_tasks_need_the_other_file(tmp_path, tiny_tokenizer):
    assert repository(0, "train", 3) == repository(0, "train", 3)
    assert repository(0, "train", 3) != repository(1, "train", 3) != repository(0, "heldout", 3)
    roots = write_repositories(tmp_path / "held", 0, "heldout", 6)
    assert [r.name for r in roots] == [f"repo_{i:04d}" for i in range(6)]
    assert write_repositories(tmp_path / "held", 0, "heldout", 6) == roots  # an existing folder is reused
    with pytest.raises(ValueError, match="holds 6 repositories, not 7"):
        write_repositories(tmp_path / "held", 0, "heldout", 7)
    tasks, dropped = build_tasks(roots, tiny_tokenizer, per_repository=3, context_tokens=512)
    assert len(tasks) == 18 and not dropped
    for task in tasks:
        files = repository(0, "heldout", int(task.repository[-4:]))
        own = files[task.path]
        # the name is on the middle line only: absent from the file's prefix and suffix, defined in the library file
        assert not re.search(rf"\b{task.name}\b", task.prefix + task.suffix)
        assert re.search(rf"\b{task.name}\b", task.middle) and own.count(task.name) == 1
        assert re.search(rf"^(def {task.name}\(|{task.name} =)", files[task.defined_in], re.M)
        assert task.context_files == (task.defined_in,) and task.defined_in in task.context


def _record(task_id, exact_with, exact_without, loss_with, loss_without):
    return {
        "task_id": task_id,
        "exact_with_context": exact_with,
        "exact_without_context": exact_without,
        "loss_with_context": loss_with,
        "loss_without_context": loss_without,
    }


def test_summary_and_paired_gap():
    file_level = [_record(i, i == 0, False, 2.0, 2.0) for i in range(4)]
    repo_level = [_record(i, i < 3, False, 1.0 + 0.1 * i, 2.0) for i in range(4)]
    summary = summarize(repo_level)
    em = summary["with_context"]["exact_match"]
    assert (em["k"], em["n"], em["rate"]) == (3, 4, 0.75) and 0.3 < em["low"] < 0.75 < em["high"] < 1
    assert summary["without_context"]["exact_match"]["low"] == 0.0  # Wilson at 0/n still has width above
    assert summary["without_context"]["exact_match"]["high"] > 0.4
    assert summary["context_gain"]["mean"] == pytest.approx(2.0 - 1.15)
    gap = _paired_gap(file_level, repo_level)["with_context"]
    assert (gap["exact_only_second"], gap["exact_only_first"]) == (2, 0)
    assert gap["loss_reduction"]["mean"] == pytest.approx(0.85) and gap["loss_reduction"]["low"] > 0
    with pytest.raises(ValueError, match="different tasks"):
        _paired_gap(file_level, list(reversed(repo_level)))
