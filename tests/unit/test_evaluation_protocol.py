"""Evaluation protocol choices that change scores: prompt form per tokenizer, chat style, failure causes, and a
real pretrained model (SmolLM2-135M-Instruct, a registry asset) scoring above zero."""

from __future__ import annotations

import logging

import pytest

from codellama_hf.evaluation.humaneval import HumanEval, HumanEvalInfilling
from codellama_hf.evaluation.prompts import apply_form, chat_prompt, chat_stop, choose_form
from codellama_hf.evaluation.scoring import failure_causes, score


@pytest.fixture(scope="module")
def humaneval():
    return HumanEval()


@pytest.fixture(scope="session")
def bpe_tokenizer(smollm2_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_path)


def test_bpe_tokenizer_default_form_is_a_token_boundary_and_unstripped_warns(humaneval, bpe_tokenizer, caplog):
    with caplog.at_level(logging.WARNING, logger="codellama_hf.evaluation.prompts"):
        chosen = choose_form(humaneval, bpe_tokenizer, humaneval.problems)
    assert chosen.form == "strip" and chosen.preferred == "strip" and not caplog.records
    assert chosen.boundary == {"strip": "164/164", "unstripped": "0/164"}  # "\n" + "    " is one BPE token
    with caplog.at_level(logging.WARNING, logger="codellama_hf.evaluation.prompts"):
        forced = choose_form(humaneval, bpe_tokenizer, humaneval.problems, "unstripped")
    assert forced.form == "unstripped"
    assert "164 of 164 unstripped prompts do not end on a token boundary" in caplog.text


def test_codellama_tokenizer_both_forms_give_the_same_ids_at_the_boundary(humaneval, codellama_tokenizer, caplog):
    with caplog.at_level(logging.WARNING, logger="codellama_hf.evaluation.prompts"):
        chosen = choose_form(humaneval, codellama_tokenizer, humaneval.problems)
    assert chosen.form == "strip" and chosen.boundary == {"strip": "164/164", "unstripped": "164/164"}
    assert not caplog.records
    for problem in humaneval.problems:  # (leading newlines, also stripped, only shift the start)
        stripped = codellama_tokenizer(problem.prompt.rstrip())["input_ids"]
        unstripped = codellama_tokenizer(problem.prompt)["input_ids"]
        tail = unstripped[len(stripped) :]
        assert unstripped[: len(stripped)] == stripped and tail and set(tail) == {13}  # "\n" tokens only


def test_forms_keep_the_program_and_apply_per_benchmark(humaneval, codellama_tokenizer):
    problems = humaneval.problems[:3]
    for form in ("strip", "unstripped"):
        shaped = [apply_form(p, form) for p in problems]
        humaneval.problems = shaped
        scored = score(
            humaneval,
            [{"task_id": p.task_id, "completion": p.reference} for p in shaped],
            allow_code_execution=True,
            ks=(1,),
            progress=False,
        )
        assert scored.metrics["pass@1"] == 1.0, form
    infilling = HumanEvalInfilling("single")
    assert choose_form(infilling, codellama_tokenizer, infilling.problems[:50]).form == "unstripped"
    with pytest.raises(ValueError, match="does not apply to humaneval-infill-single"):
        choose_form(infilling, codellama_tokenizer, infilling.problems[:5], "strip")


def test_results_keep_why_each_program_failed(humaneval, tmp_path):
    task = "HumanEval/0"
    samples = [
        {"task_id": task, "completion": "    return (\n"},
        {"task_id": task, "completion": "    return undefined_name\n"},
        {"task_id": task, "completion": "    return False\n"},
        {"task_id": task, "completion": "    while True:\n        pass\n"},
        {"task_id": task, "completion": humaneval.by_id()[task].reference},
    ]
    scored = score(humaneval, samples, allow_code_execution=True, ks=(1,), timeout_floor=1.0, progress=False)
    causes = [s["cause"] for s in scored.samples]
    assert causes == ["SyntaxError", "NameError", "AssertionError", "Timeout", None]
    assert "undefined_name" in scored.samples[1]["stderr_tail"] and scored.samples[4]["stderr_tail"] == ""
    assert all(s["timeout"] >= 1.0 for s in scored.samples)
    assert failure_causes(scored.samples) == {"SyntaxError": 1, "NameError": 1, "AssertionError": 1, "Timeout": 1}


def test_chat_style_uses_the_models_template(humaneval, codellama_tokenizer, bpe_tokenizer):
    from codellama_hf.chat import CHAT_TEMPLATE, prompt_ids
    from codellama_hf.tokenizer import encode

    problem = apply_form(humaneval.problems[0], "strip")
    instruct = codellama_tokenizer.__class__.from_pretrained(codellama_tokenizer.name_or_path)
    instruct.chat_template = CHAT_TEMPLATE
    ids = chat_prompt(instruct, problem, "python")
    head = prompt_ids(instruct, [{"role": "user", "content": _request(problem, tagged=True)}])
    assert ids[: len(head)] == head and ids[:3] == [1, 518, 25580]  # <s> ▁[ INST, as Meta's chat_completion
    # Code Llama - Instruct answers Python between [PYTHON] tags (paper Fig. 12-13), as the instruct stage trains
    assert ids[len(head) :] == encode(instruct, "[PYTHON]\n" + problem.prompt)
    assert chat_stop(problem.stop, instruct, "python")[-1] == "[/PYTHON]"
    assert chat_stop(problem.stop, instruct, "cpp")[-1] == "\n```"  # tags are Python's; other languages: fences
    smol = bpe_tokenizer.decode(chat_prompt(bpe_tokenizer, problem, "python"))
    assert smol.startswith("<|im_start|>") and smol.endswith("<|im_start|>assistant\n```python\n" + problem.prompt)
    assert chat_stop(problem.stop, bpe_tokenizer, "python")[-1] == "\n```"
    with pytest.raises(ValueError, match="no chat template"):
        chat_prompt(codellama_tokenizer, problem, "python")


def test_chat_prompt_on_a_bpe_base_with_code_llamas_template_is_what_training_encoded(humaneval, bpe_tokenizer):
    """A byte-level base trained by the instruct stage carries Code Llama - Instruct's template: the evaluation
    prompt must be the prefix of the training encoding of the same dialog (chat.encode_dialogs), the space after
    [/INST] included (SentencePiece's implicit "▁" does not exist there)."""
    from codellama_hf.chat import CHAT_TEMPLATE, encode_dialogs

    problem = apply_form(humaneval.problems[0], "strip")
    smol = bpe_tokenizer.__class__.from_pretrained(bpe_tokenizer.name_or_path)
    smol.chat_template = CHAT_TEMPLATE
    ids = chat_prompt(smol, problem, "python")
    answer = "[PYTHON]\n" + problem.prompt + "    return 1\n[/PYTHON]"
    trained, _ = encode_dialogs(
        smol, [[{"role": "user", "content": _request(problem, tagged=True)}, {"role": "assistant", "content": answer}]]
    )[0]
    assert trained[: len(ids)] == ids
    assert smol.decode(ids).endswith(" [/INST] [PYTHON]\n" + problem.prompt)


def _request(problem, tagged: bool = False) -> str:
    from codellama_hf.evaluation.prompts import CHAT_REQUEST, TAGGED_REQUEST

    if tagged:
        return TAGGED_REQUEST.format(prompt=problem.prompt)
    return CHAT_REQUEST.format(language="python", prompt=problem.prompt)
