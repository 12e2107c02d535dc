"""Model cards from a model's lineage and evaluation results (codellama_hf.publish).

The family used here (and by test_hub.py) is made by real, tiny training stages: transformers' Trainer runs two
steps, then the stage engineer's `lineage_record` and `save_final` write the folder exactly as a stage does. The
evaluation results come from the evaluation engineer's runner (perplexity) and result writer.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

CODE_DATA = {
    "mixture": "code",
    "mixture_weights": {"code": 0.85, "nl_code": 0.08, "nl": 0.07},
    "documents": 120,
    "fim": {"rate": 0.9, "spm_rate": 0.5, "seed": 3},
}
PYTHON_DATA = {
    "mixture": "python",
    "mixture_weights": {"python": 0.75, "code": 0.25},
    "fim": None,
    "mixture_sources": {"python": [{"dataset": "bigcode/the-stack-smol"}]},
}
FAMILY_STAGES = {  # slot -> (stage, parent slot, theta, tokenizer, data description)
    "tiny": ("code", None, 1e4, "infill", CODE_DATA),
    "tiny-python": ("python", "tiny", 1e4, "infill", PYTHON_DATA),
    "tiny-instruct": ("lcft", "tiny", 1e6, "chat", {"sources": ["/data/instructions"], "fim": None}),
}


def train_stage(
    out: Path,
    *,
    stage: str,
    base: Path | None,
    tokenizer_dir: Path,
    theta: float,
    data: dict,
    seed: int,
    steps: int = 2,
) -> Path:
    """A real tiny stage: Trainer steps on token rows, then training.lineage_record and training.save_final."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM, Trainer, default_data_collator

    from codellama_hf.models import llama_config, set_rope_theta
    from codellama_hf.training.config import StageConfig
    from codellama_hf.training.lineage import lineage_record, read_lineage, save_final

    config = StageConfig(
        stage=stage,
        output_dir=str(out),
        max_steps=steps,
        tokens_per_step=64,
        seq_len=32,
        per_device_train_batch_size=2,
        warmup_steps=0,
        learning_rate=1e-3,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        seed=seed,
        use_cpu=True,
    )
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    if base is None:
        model = LlamaForCausalLM(llama_config("tiny", vocab_size=len(tokenizer), theta=theta, intermediate_size=384))
        origin = {"name_or_path": None, "random_init": "tiny", "seed": seed, "lineage": None}
    else:
        model = AutoModelForCausalLM.from_pretrained(base)
        set_rope_theta(model.config, theta)
        origin = {"name_or_path": str(base), "random_init": None, "lineage": read_lineage(base)}
    origin["tokenizer"] = str(tokenizer_dir)
    rows = torch.randint(3, len(tokenizer), (2 * steps, 32), generator=torch.Generator().manual_seed(seed))
    dataset = datasets.Dataset.from_dict({"input_ids": rows.tolist(), "labels": rows.tolist()})
    trainer = Trainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        data_collator=default_data_collator,
    )
    started = time.time()
    trainer.train()
    lineage = lineage_record(
        config=config,
        base=origin,
        data_info={**data, "seq_len": 32},
        model=trainer.model,
        tokenizer=tokenizer,
        trainer=trainer,
        runtime=time.time() - started,
    )
    return save_final(trainer, lineage)


def tiny_family(tmp_path_factory) -> dict[str, Path]:
    """Three stage outputs (base -> python, base -> 'instruct'), built once per test session."""
    from codellama_hf.chat import CHAT_TEMPLATE
    from codellama_hf.tokenizer import build_tiny_tokenizer, load_sp_model, save_tokenizer

    root = tmp_path_factory.getbasetemp() / "tiny_family"
    folders = {slot: root / slot for slot in FAMILY_STAGES}
    if (root / "done").is_file():
        return folders
    tokenizers = {"infill": build_tiny_tokenizer(root / "tok-infill")}
    tokenizers["chat"] = save_tokenizer(
        load_sp_model(tokenizers["infill"] / "tokenizer.model"), root / "tok-chat", chat_template=CHAT_TEMPLATE
    )
    for seed, (slot, (stage, parent, theta, tok, data)) in enumerate(FAMILY_STAGES.items(), 1):
        train_stage(
            folders[slot],
            stage=stage,
            base=folders[parent] if parent else None,
            tokenizer_dir=tokenizers[tok],
            theta=theta,
            data=data,
            seed=seed,
        )
    (root / "done").write_text("")
    return folders


def write_results(folder: Path, model_dir: Path, *, pass_at_1: float, subset_of: int | None = None) -> Path:
    """Results JSON through the evaluation engineer's writer, plus a real perplexity run on the model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from codellama_hf.evaluation.report import new_result, write_result
    from codellama_hf.evaluation.runner import evaluate_perplexity

    total = 164
    write_result(
        folder,
        new_result(
            "humaneval",
            str(model_dir),
            metrics={"pass@1": pass_at_1},
            num_problems=subset_of or total,
            total_problems=total,
            num_samples=total,
            config={
                "n_samples": 1,
                "do_sample": False,
                "temperature": 0.0,
                "top_p": 0.95,
                "max_new_tokens": 512,
                "prompt": {"form": "strip", "style": "completion"},
            },
        ),
    )
    model, tokenizer = AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    source = Path(json.__file__)  # a real Python file from the standard library
    evaluate_perplexity(
        model, tokenizer, str(model_dir), folder, lengths=[16, 32], files=[source], max_tokens_per_file=64
    )
    return folder


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return tiny_family(tmp_path_factory)


@pytest.fixture(scope="module")
def results(family, tmp_path_factory):
    return write_results(tmp_path_factory.mktemp("results"), family["tiny"], pass_at_1=0.3125)


def _card(folder, results=None, **options):
    from codellama_hf.publish.card import CardOptions, render_card
    from codellama_hf.publish.facts import read_facts, read_results

    return render_card(read_facts(folder), read_results(results), CardOptions(**options))


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
