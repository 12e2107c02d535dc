"""`codellama-hf`: one parser per command; convert's flags are recipes/convert.py's, in either spelling."""

import dataclasses
import sys

import pytest

from codellama_hf.cli import COMMANDS, build_parser
from codellama_hf.convert.config import ConvertConfig


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
