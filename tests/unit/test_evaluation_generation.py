"""The generation layer and the model-driven evaluations, end to end on a tiny random Llama on CPU.

Scores are 0 with a random model; what is checked is the plumbing: prompts, padding, stopping, decoding, files."""

from __future__ import annotations

import ast
import json

import pytest
import torch

from codellama_hf.evaluation.long_context import (
    QUERY,
    answer_value,
    key_retrieval_prompts,
    perplexity_by_length,
    window_nll,
)
from codellama_hf.evaluation.runner import ExecutionSettings, GenerationSettings, evaluate_execution
from codellama_hf.generation import HFBackend, generate, infill, truncate_at_stop
from codellama_hf.tokenizer import encode, infill_ids, infilling_prompt
from tests.helpers.evaluation_generation import constant_model


def test_batched_left_padded_generation_equals_one_by_one(tiny_model, tiny_tokenizer):
    prompts = ["def add(a, b):\n", "import os\n\n\nclass Config:\n    path = os.getcwd()\n", "x = 1\n"]
    batched = generate(tiny_model, tiny_tokenizer, prompts, max_new_tokens=12, batch_size=3)
    single = [generate(tiny_model, tiny_tokenizer, [p], max_new_tokens=12, batch_size=1)[0] for p in prompts]
    assert batched == single
    assert all(len(c) == 1 and c[0] for c in batched)


def test_sampling_is_seeded_and_n_per_prompt(tiny_model, tiny_tokenizer):
    kwargs = dict(max_new_tokens=6, do_sample=True, temperature=0.8, top_p=0.95, n=3, batch_size=2)
    first = generate(tiny_model, tiny_tokenizer, ["def f():\n", "# a\n"], seed=7, **kwargs)
    assert first == generate(tiny_model, tiny_tokenizer, ["def f():\n", "# a\n"], seed=7, **kwargs)
    assert [len(c) for c in first] == [3, 3] and len(set(first[0])) > 1
    with pytest.raises(ValueError, match="do_sample"):
        generate(tiny_model, tiny_tokenizer, ["x"], max_new_tokens=2, n=2)
    with pytest.raises(ValueError, match="temperature"):
        generate(tiny_model, tiny_tokenizer, ["x"], max_new_tokens=2, do_sample=True, temperature=0.0)


def test_stop_sequences_stop_generation_and_cut_text(tiny_model_factory, tiny_tokenizer):
    newline = tiny_tokenizer.convert_tokens_to_ids("<0x0A>")
    model = constant_model(tiny_model_factory, len(tiny_tokenizer), newline)
    assert generate(model, tiny_tokenizer, ["def f():"], max_new_tokens=20, stop=["\n"]) == [[""]]
    assert len(model.calls) <= 2  # stopped as soon as the stop sequence appeared, not after 20 tokens
    model.calls.clear()
    assert generate(model, tiny_tokenizer, ["def f():"], max_new_tokens=5) == [["\n" * 5]]
    assert truncate_at_stop("a\nb\ndef c", ["\ndef", "\nb"]) == "a"


def test_completion_keeps_the_leading_space_of_its_first_token(tiny_model_factory, tiny_tokenizer):
    ret = tiny_tokenizer.convert_tokens_to_ids("▁return")
    model = constant_model(tiny_model_factory, len(tiny_tokenizer), ret)
    assert generate(model, tiny_tokenizer, ["def f():\n   "], max_new_tokens=1) == [[" return"]]


@pytest.mark.parametrize("suffix_first", [False, True], ids=["PSM", "SPM"])
def test_infilling_prompt_layout_and_stop_at_eot(tiny_model_factory, tiny_tokenizer, suffix_first):
    ids = infill_ids(tiny_tokenizer)
    prefix, suffix = "def f(x):\n    ", "\n    return y\n"
    model = constant_model(tiny_model_factory, len(tiny_tokenizer), ids.eot)
    assert infill(model, tiny_tokenizer, [prefix], [suffix], suffix_first=suffix_first, max_new_tokens=9) == [""]
    assert model.calls[0][0].tolist() == infilling_prompt(tiny_tokenizer, prefix, suffix, suffix_first=suffix_first)
    assert len(model.calls) == 1  # ▁<EOT> ended generation
    word = encode(tiny_tokenizer, "value")
    if len(word) == 1:
        model = constant_model(tiny_model_factory, len(tiny_tokenizer), word[0])
        middle = infill(model, tiny_tokenizer, [prefix], [suffix], suffix_first=suffix_first, max_new_tokens=3)
        assert middle == [" value value value"]  # Meta's decode_infilling keeps the first token's space


def test_infilling_refuses_models_without_infilling(tmp_path, tiny_model_factory, tiny_tokenizer):
    from transformers import AutoTokenizer

    from codellama_hf.tokenizer import build_tiny_tokenizer

    plain = AutoTokenizer.from_pretrained(build_tiny_tokenizer(tmp_path / "plain", infilling=False))
    model = tiny_model_factory(len(plain))
    with pytest.raises(ValueError, match="no infilling pieces"):
        evaluate_execution(
            "humaneval-infill-single",
            HFBackend(model, plain),
            "plain",
            tmp_path / "out",
            limit=1,
            execution=ExecutionSettings(allow_code_execution=True),
        )
    with pytest.raises(ValueError, match="has no infilling tokens"):
        infill(tiny_model_factory(4000), tiny_tokenizer, ["a"], ["b"], max_new_tokens=2)


def test_infilling_evaluation_end_to_end(tmp_path, tiny_model, tiny_tokenizer):
    result = evaluate_execution(
        "humaneval-infill-multi",
        HFBackend(tiny_model, tiny_tokenizer),
        "tiny",
        tmp_path,
        generation=GenerationSettings(max_new_tokens=4),
        infill_format="spm",
        limit=3,
        execution=ExecutionSettings(allow_code_execution=True),
    )
    assert result["task"] == "humaneval-infill-multi-spm" and result["metrics"] == {"pass@1": 0.0}
    assert result["config"]["infill_format"] == "spm" and result["total_problems"] == 5815
    samples = (tmp_path / "humaneval-infill-multi-spm.samples.jsonl").read_text().splitlines()
    assert [json.loads(s)["task_id"] for s in samples] == ["HumanEval/0/0-0", "HumanEval/0/0-1", "HumanEval/0/0-2"]


def test_key_retrieval_prompts(tiny_tokenizer):
    prompts = key_retrieval_prompts(tiny_tokenizer, [300, 600], [0.0, 0.4], examples=2)
    assert len(prompts) == 8 and len({p["prompt"] for p in prompts}) == 8
    for p in prompts:
        assert p["prompt"].endswith(QUERY) and 10 <= p["value"] <= 99
        assert 0.9 * p["length"] <= p["tokens"] <= p["length"]
        ast.parse(p["prompt"] + str(p["value"]))  # the haystack stays valid Python
        where = p["prompt"].index("def my_function() -> int:") / len(p["prompt"])
        assert abs(where - p["depth"]) < 0.1
        assert f"    return {p['value']}\n" in p["prompt"]
    assert prompts[0]["prompt"].startswith("def my_function() -> int:")
    assert (answer_value(" 42\n"), answer_value("x"), answer_value("07)")) == (42, None, 7)
    with pytest.raises(ValueError, match="too short"):
        key_retrieval_prompts(tiny_tokenizer, [20])


def test_perplexity_windowing(tiny_model, tiny_tokenizer):
    ids = torch.tensor([tiny_tokenizer("def f(x):\n    return x * 2\n" * 8)["input_ids"]])
    with torch.no_grad():
        loss = tiny_model(input_ids=ids, labels=ids).loss.item()
    length = ids.shape[1]
    assert window_nll(tiny_model, ids, length - 1, chunk=7) == pytest.approx(loss * (length - 1), rel=1e-5)
    text = "import os\n" + "print(os.getcwd())\n" * 40
    result = perplexity_by_length(tiny_model, tiny_tokenizer, [text, "too short"], [8, 32], max_tokens_per_text=100)
    assert result["files"] == 1 and result["scored_tokens"] == 99  # every token but the first, at every length
    assert set(result["perplexity"]) == {"8", "32"} and all(v > 1 for v in result["perplexity"].values())
    with pytest.raises(ValueError, match="no text has"):
        perplexity_by_length(tiny_model, tiny_tokenizer, ["short"], [64])
