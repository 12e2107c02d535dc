"""Evaluation protocol choices that change scores: prompt form per tokenizer, chat style, failure causes, and a
real pretrained model (SmolLM2-135M-Instruct, a registry asset) scoring above zero."""

from __future__ import annotations

import json

import pytest

from codellama_hf.evaluation.report import write_report
from codellama_hf.evaluation.runner import ExecutionSettings, GenerationSettings, evaluate_execution

# HumanEval problems SmolLM2-135M-Instruct solves greedily from stripped prompts (measured: bench/generation.py).
SOLVED = ("HumanEval/23", "HumanEval/28", "HumanEval/53")


@pytest.mark.slow
def test_real_model_scores_above_zero_and_batching_changes_nothing(smollm2_path, tmp_path):
    """SmolLM2 through the CLI's path: stripped prompts chosen for its BPE tokenizer, 3 of 3 solved; the refilled
    batch gives the same completions as one prompt at a time."""
    from codellama_hf.generation import HFBackend, load_model

    model, tokenizer = load_model(str(smollm2_path))
    runs = []
    for batch_size in (2, 1):
        out = tmp_path / f"batch{batch_size}"
        result = evaluate_execution(
            "humaneval",
            HFBackend(model, tokenizer, batch_size=batch_size),
            "smollm2",
            out,
            generation=GenerationSettings(max_new_tokens=64, batch_size=batch_size),
            execution=ExecutionSettings(allow_code_execution=True),
            task_ids=SOLVED,
        )
        samples = [json.loads(line) for line in (out / "humaneval.samples.jsonl").read_text().splitlines()]
        runs.append([s["completion"] for s in samples])
        assert result["metrics"] == {"pass@1": 1.0} and result["num_problems"] == 3
        assert result["config"]["prompt"]["form"] == "strip" and result["failures"] == {}
    assert runs[0] == runs[1]
    assert "strip, completion" in write_report(tmp_path / "batch2").read_text()


# HumanEval problems SmolLM2-135M-Instruct solves greedily in its own chat template (ChatML), fp32 on a CPU, 64 new
# tokens (measured with evaluate_execution(..., prompt_style="chat") on the 12 shortest-solution problems: 3 solved).
SOLVED_CHAT = ("HumanEval/23", "HumanEval/34", "HumanEval/53")


@pytest.mark.slow
def test_real_model_chat_style_solves_known_problems_identically_on_rerun(smollm2_path, tmp_path):
    """SmolLM2 prompted as instruct models are evaluated: its chat template, the answer opened with a fence and the
    code prompt, generation stopped at the closing fence, the program run in the sandbox. The problems it is
    measured to solve all pass, so a regression in chat prompting, stopping or scoring shows as a drop from
    pass@1 = 1; generating one of them again alone, and rescoring the samples file, give the same answers."""
    from codellama_hf.evaluation.runner import score_samples
    from codellama_hf.generation import STOP, HFBackend, load_model

    model, tokenizer = load_model(str(smollm2_path))
    settings = GenerationSettings(max_new_tokens=64, batch_size=len(SOLVED_CHAT))
    result = evaluate_execution(
        "humaneval",
        HFBackend(model, tokenizer, batch_size=len(SOLVED_CHAT)),
        "smollm2",
        tmp_path / "chat",
        generation=settings,
        execution=ExecutionSettings(allow_code_execution=True),
        task_ids=SOLVED_CHAT,
        prompt_style="chat",
    )
    assert result["metrics"] == {"pass@1": 1.0} and result["num_problems"] == len(SOLVED_CHAT)
    assert result["config"]["prompt"]["style"] == "chat" and result["failures"] == {}
    samples_path = tmp_path / "chat" / "humaneval.samples.jsonl"
    samples = [json.loads(line) for line in samples_path.read_text().splitlines()]
    assert all(s["finish_reason"] == STOP for s in samples)  # ended at a stop sequence, not at the token cap

    again = evaluate_execution(
        "humaneval",
        HFBackend(model, tokenizer, batch_size=1),
        "smollm2",
        tmp_path / "again",
        generation=GenerationSettings(max_new_tokens=64, batch_size=1),
        execution=ExecutionSettings(allow_code_execution=True),
        task_ids=SOLVED_CHAT[:1],
        prompt_style="chat",
    )
    first = json.loads((tmp_path / "again" / "humaneval.samples.jsonl").read_text().splitlines()[0])
    assert again["metrics"] == {"pass@1": 1.0}
    assert first["completion"] == next(s["completion"] for s in samples if s["task_id"] == SOLVED_CHAT[0])
    rescored = score_samples(
        "humaneval",
        samples_path,
        tmp_path / "rescored",
        execution=ExecutionSettings(allow_code_execution=True),
        prompt_form=result["config"]["prompt"]["form"],
    )
    assert rescored["metrics"] == result["metrics"]
