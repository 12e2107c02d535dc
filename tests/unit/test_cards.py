"""Model cards from a model's lineage and evaluation results (codellama_hf.publish).

The family used here (and by test_hub.py) is made by real, tiny training stages: transformers' Trainer runs two
steps, then the stage engineer's `lineage_record` and `save_final` write the folder exactly as a stage does. The
evaluation results come from the evaluation engineer's runner (perplexity) and result writer.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.helpers.cards import _card


def test_card_metadata_parses_and_carries_measured_results(family, results):
    from huggingface_hub import ModelCard

    from codellama_hf.family import parse_slot

    card = ModelCard(
        str(
            _card(
                family["tiny"],
                results,
                repo_id="me/CodeLlama-tiny-hf",
                variant=parse_slot("tiny"),
                base_model="meta-llama/Llama-2-7b-hf",
            )
        )
    )
    data = card.data
    assert (data.license, data.language, data.pipeline_tag) == ("llama2", ["code"], "text-generation")
    assert {"llama-2", "code", "codellama_hf", "stage-code", "codellama-base"} <= set(data.tags)
    assert data.base_model == "meta-llama/Llama-2-7b-hf"
    humaneval = json.loads((results / "humaneval.json").read_text())
    [entry] = data.eval_results  # perplexity has no Hub benchmark: table only
    assert (entry.dataset_type, entry.metric_type, entry.metric_value) == (
        "openai/openai_humaneval",
        "pass@1",
        humaneval["metrics"]["pass@1"],
    )
    assert data.model_name == "CodeLlama-tiny-hf"
    headings = re.findall(r"^## (.+)$", card.text, flags=re.M)
    assert headings == [
        "Model Use",
        "Model Details",
        "Intended Use",
        "Hardware and Software",
        "Training Data",
        "Evaluation Results",
        "Ethical Considerations and Limitations",
    ]  # Meta's card order
    perplexity = json.loads((results / "perplexity.json").read_text())["metrics"]
    for value in perplexity.values():
        assert f"{value:.4f}" in card.text  # the evaluation report's own table
    assert "| humaneval | greedy | 1 | 512 | strip, completion |" in card.text  # the prompt protocol used


def test_every_number_comes_from_the_folder(family):
    """Stage facts in the card are the lineage's and config's; changing them changes the card."""
    from codellama_hf.publish.facts import read_facts

    facts = read_facts(family["tiny-instruct"])
    text = str(_card(family["tiny-instruct"]))
    code, lcft = facts.stages
    assert [s["stage"] for s in facts.stages] == ["code", "lcft"]
    for stage in facts.stages:
        assert f"| {stage['tokens_seen']:,} | {stage['steps']:,} |" in text
    assert f"{facts.parameters:,} parameters" in text and "| RoPE theta | 1,000,000 |" in text
    assert f"| Vocabulary | {facts.config['vocab_size']:,} |" in text
    assert f"finished between {code['finished']} and {lcft['finished']}" in text
    assert "- [x] Instructions / chat." in text and "- [x] Infilling." in text
    # A lineage with other numbers gives a card with those numbers.
    lineage = json.loads((family["tiny-instruct"] / "lineage.json").read_text())
    lineage["tokens_seen"] = 987_654_321
    lineage["hyperparameters"]["learning_rate"] = 7.5e-06
    facts.stages[-1].update(tokens_seen=987_654_321, hyperparameters=lineage["hyperparameters"])
    from codellama_hf.publish.card import CardOptions, render_card

    changed = str(render_card(facts, [], CardOptions()))
    assert "987,654,321" in changed and "7.5e-06" in changed and "987,654,321" not in text


def test_parents_in_the_family_become_base_model_links(family):
    from codellama_hf.family import parse_slot

    published = {str(family["tiny"].resolve()): "me/CodeLlama-tiny-hf"}
    card = _card(
        family["tiny-python"],
        variant=parse_slot("tiny-python"),
        repo_id="me/CodeLlama-tiny-Python-hf",
        published=published,
        family={parse_slot("tiny"): "me/CodeLlama-tiny-hf", parse_slot("tiny-python"): "me/CodeLlama-tiny-Python-hf"},
    )
    assert card.data.base_model == "me/CodeLlama-tiny-hf"
    assert card.data.datasets == ["bigcode/the-stack-smol"]
    assert "[me/CodeLlama-tiny-hf](https://huggingface.co/me/CodeLlama-tiny-hf)" in card.text
    assert "- [x] Python specialist." in card.text and "No fill-in-the-middle." in card.text
    assert card.data.eval_results is None and "No evaluation results were given" in card.text


def test_subset_and_skipped_runs_stay_out_of_the_model_index(family, tmp_path):
    from codellama_hf.evaluation.report import new_result, write_result

    write_result(tmp_path, new_result("mbpp", "m", metrics={"pass@1": 0.5}, num_problems=20, total_problems=500))
    write_result(tmp_path, new_result("multiple-cpp", "m", skipped="no g++ on this machine"))
    write_result(
        tmp_path,
        new_result(
            "humaneval-infill-single-spm", "m", metrics={"pass@1": 0.25}, num_problems=1033, total_problems=1033
        ),
    )
    card = _card(family["tiny"], tmp_path)
    [entry] = card.data.eval_results
    assert (entry.dataset_type, entry.dataset_config, entry.metric_value) == (
        "loubnabnl/humaneval_infilling",
        "HumanEval-SingleLineInfilling",
        0.25,
    )
    assert "subset of 500" in card.text and "skipped: no g++ on this machine" in card.text


def test_bad_input_is_a_clear_error(family, tmp_path):
    import shutil

    from codellama_hf.publish.facts import read_facts, read_results

    folder = tmp_path / "m"
    shutil.copytree(family["tiny"], folder)
    (folder / "lineage.json").unlink()
    with pytest.raises(FileNotFoundError, match="lineage.json: not found"):
        read_facts(folder)
    (folder / "lineage.json").write_text('{"stage": "code"')
    with pytest.raises(ValueError, match="lineage.json: not valid JSON"):
        read_facts(folder)
    (folder / "lineage.json").write_text('{"steps": 3}')
    with pytest.raises(ValueError, match="needs 'stage' and 'base_model'"):
        read_facts(folder)
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "humaneval.json").write_text("{oops")
    with pytest.raises(ValueError, match="humaneval.json: not a results file"):
        read_results(tmp_path / "r")


def test_card_cli(family, results, tmp_path, capsys):
    from codellama_hf.cli import main

    out = tmp_path / "README.md"
    assert (
        main(
            [
                "card",
                str(family["tiny"]),
                "--results",
                str(results),
                "--variant",
                "tiny",
                "--repo-id",
                "me/CodeLlama-tiny-hf",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert capsys.readouterr().out == f"wrote {out}\n"
    assert out.read_text().startswith("---\n") and "# **CodeLlama-tiny-hf**" in out.read_text()


def test_evaluations_during_training_from_the_lineage(family):
    """A stage's quick evaluations (lineage `evaluations_during_training`) become a table of the card."""
    from codellama_hf.publish.card import CardOptions, render_card
    from codellama_hf.publish.facts import read_facts

    facts = read_facts(family["tiny-instruct"])
    assert "Evaluations during training" not in str(render_card(facts, [], CardOptions()))
    facts.stages[0]["evaluations_during_training"] = {
        "history": [
            {"step": 5, "metrics": {"perplexity@256": 41.5, "infill_exact_match_with_context": 0.25}},
            {"step": 10, "metrics": {"perplexity@256": 30.25}},
        ]
    }
    text = str(render_card(facts, [], CardOptions()))
    assert "Evaluations during training" in text
    assert "| code | 5 | infill_exact_match_with_context | 0.25 |" in text
    assert "| code | 10 | perplexity@256 | 30.25 |" in text


def test_card_states_the_papers_lineage_and_a_python_model_that_departs_from_it(family):
    from codellama_hf.family import parse_slot

    base = str(_card(family["tiny"], variant=parse_slot("tiny")))
    assert "The paper's lineage for Code Llama (tiny): Llama 2 → code (FIM) → LCFT." in base
    # this Python model continues the FIM code model with the infilling pieces: the card says so
    python = str(_card(family["tiny-python"], variant=parse_slot("tiny-python")))
    assert "differs from the paper's Code Llama - Python (tiny): it has FIM training in code" in python
    assert "Llama 2 →" not in python
