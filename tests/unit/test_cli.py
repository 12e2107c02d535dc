"""`codellama-hf`: one parser per command; convert's and evaluate's flags are their recipes', in either spelling."""

import dataclasses
import sys

import pytest

from codellama_hf.cli import COMMANDS, build_parser
from codellama_hf.convert.config import ConvertConfig
from tests.helpers import load_recipe


def _convert_config(argv):
    args = build_parser(argv).parse_args(argv)
    names = {f.name for f in dataclasses.fields(ConvertConfig)}
    return ConvertConfig(**{k: v for k, v in vars(args).items() if k in names})


def test_every_command_registers():
    parser = build_parser([])
    for command in COMMANDS:
        with pytest.raises(SystemExit) as done:
            parser.parse_args([command, "--help"])
        assert done.value.code == 0


def test_convert_flags_match_the_recipe_in_both_spellings(monkeypatch):
    from trl import TrlParser

    dashes = _convert_config(
        ["convert", "meta-to-hf", "--input", "in", "--output", "out", "--extend-vocab", "--max-shard-size", "2MB"]
        + ["--tokenizer", "tok.model", "--no-load-check"]
    )
    underscores = _convert_config(
        ["convert", "meta-to-hf", "--input", "in", "--output", "out", "--extend_vocab", "true"]
        + ["--max_shard_size", "2MB", "--tokenizer_model", "tok.model", "--load_check", "false"]
    )
    monkeypatch.setattr(
        sys,
        "argv",
        ["convert.py", "--input", "in", "--output", "out", "--extend_vocab", "true", "--max-shard-size", "2MB"]
        + ["--tokenizer", "tok.model", "--no_load_check"],
    )
    (recipe,) = TrlParser([ConvertConfig]).parse_args_and_config()
    assert dashes == underscores == recipe
    assert dashes.extend_vocab and not dashes.load_check and dashes.direction == "meta-to-hf"
    back = _convert_config(["convert", "hf-to-meta", "--input", "in", "--output", "out", "--shards", "2"])
    assert (back.direction, back.shards, back.progress) == ("hf-to-meta", 2, True)


def test_convert_refuses_contradictions_and_missing_folders(capsys):
    from codellama_hf.cli import main

    assert main(["convert", "hf-to-meta", "--input", "a", "--output", "b", "--direction", "meta-to-hf"]) == 2
    assert "contradicts the subcommand hf-to-meta" in capsys.readouterr().err
    assert main(["convert", "meta-to-hf", "--output", "b"]) == 2
    assert "--input and --output are required" in capsys.readouterr().err


def test_every_command_takes_both_spellings():
    from codellama_hf.cli import dashed

    assert dashed(["evaluate", "humaneval", "--n_samples", "2", "--allow_code_execution", "--out=my_dir"]) == [
        "evaluate",
        "humaneval",
        "--n-samples",
        "2",
        "--allow-code-execution",
        "--out=my_dir",
    ]
    assert dashed(["x", "--", "--keep_me"]) == ["x", "--", "--keep_me"]
    argv = dashed(["evaluate", "humaneval", "--model", "m", "--n_samples", "3", "--allow_code_execution"])
    args = build_parser(argv).parse_args(argv)
    assert (args.n_samples, args.allow_code_execution) == (3, True)


def _evaluate_settings(argv):
    from codellama_hf.cli.evaluate import _parsed

    return _parsed(build_parser(argv).parse_args(argv))


def test_evaluate_flags_are_the_recipes_in_both_spellings(tmp_path):
    """Every field the CLI's subcommands take is the recipe's field of the same dataclass, equal when set alike."""
    from codellama_hf.evaluation import options as evaluation_options

    recipe = load_recipe("evaluate")
    # every settings dataclass is parsed by the recipe, and every CLI task takes only those dataclasses
    cli = build_parser(["evaluate"])
    subparsers = next(a for a in cli._actions if a.dest == "command").choices["evaluate"]
    tasks = next(a for a in subparsers._actions if a.dest == "task").choices
    used = {cls for parser in tasks.values() for cls in parser.get_default("options")}
    assert used - set(recipe.OPTIONS) == {evaluation_options.CrossFileOptions}  # the recipe runs no cross-file task

    common = [
        "--model",
        "m",
        "--out",
        str(tmp_path),
        "--limit",
        "2",
        "--max-new-tokens",
        "7",
        "--format",
        "psm",
        "spm",
    ]
    cli_model, cli_gen, cli_exec = _evaluate_settings(
        ["evaluate", "humaneval-infill-single", *common, "--n_samples", "3", "--allow-code-execution"]
        + ["--mbpp-source", "x.jsonl", "--timeout_factor", "2"]
    )
    config = tmp_path / "evaluate.yaml"
    config.write_text("model: m\nn_samples: 3\ntimeout_factor: 2\ntasks: [humaneval-infill-single, perplexity]\n")
    model, generation, execution, keys, ppl, suite = recipe.parse(
        ["--config", str(config), *common[2:], "--allow_code_execution", "true", "--mbpp_source", "x.jsonl"]
        + ["--ppl-lengths", "16", "32", "--files", "a.py"]
    )
    assert (model, generation, execution) == (cli_model, cli_gen, cli_exec)
    assert generation.infill_formats == ["psm", "spm"] and execution.allow_code_execution
    assert execution.benchmark_options("mbpp") == {"source": "x.jsonl"} and model.folder == tmp_path / "m"
    assert (ppl.ppl_lengths, ppl.ppl_files, suite.tasks) == (
        [16, 32],
        ["a.py"],
        ["humaneval-infill-single", "perplexity"],
    )
    (cli_model, cli_ppl) = _evaluate_settings(
        ["evaluate", "perplexity", "--model", "m", "--ppl_lengths", "16", "32", "--files", "a.py"]
    )
    assert cli_ppl == ppl
    (_, cli_keys) = _evaluate_settings(["evaluate", "key-retrieval", "--model", "m", "--key-lengths", "300"])
    assert cli_keys.key_lengths == [300] and cli_keys.key_depths == keys.key_depths


def test_evaluate_settings_refuse_unknown_tasks_and_formats(tmp_path):
    recipe = load_recipe("evaluate")
    with pytest.raises(ValueError, match="unknown evaluation task"):
        recipe.parse(["--model", "m", "--tasks", "humaneval", "humaneva"])
    with pytest.raises(ValueError, match="infill_formats"):
        recipe.parse(["--model", "m", "--infill_formats", "pms"])
