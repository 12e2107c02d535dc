"""The instruct stage: dialogs + rehearsal streamed with assistant-only labels, and a real tiny fine-tuning run."""

import itertools
import json
from pathlib import Path

import pytest
import yaml

from codellama_hf import chat
from codellama_hf.data.packing import PackedCollator
from codellama_hf.training.config import parse_stage_config
from codellama_hf.training.run import build_stream
from codellama_hf.training.stage import get_stage
from tests.helpers import ROOT
from tests.helpers.instruct_sft import GOOD

TINY = ROOT / "recipes" / "configs" / "tiny" / "instruct.yaml"

BAD = [
    [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],  # does not alternate
    [{"role": "assistant", "content": "hello"}],  # starts with the assistant
    [{"role": "user", "content": "no answer"}],
    [{"role": "user", "content": "long " * 400}, {"role": "assistant", "content": "ok"}],
]


def write_dialogs(path: Path) -> Path:
    path.write_text("".join(json.dumps({"messages": d, "source": "test"}) + "\n" for d in GOOD + BAD))
    return path


def stage_config(tmp_path, *overrides, config_file=TINY):
    argv = [
        "--config",
        str(config_file),
        "--output_dir",
        str(tmp_path / "out"),
        "--seq_len",
        "256",
        "--tokens_per_step",
        "1024",
        "--per_device_train_batch_size",
        "2",
        "--max_steps",
        "4",
        "--report_to",
        "none",
        "--packing_buffer",
        "16",
        *overrides,
    ]
    return parse_stage_config("instruct", argv)


def _rows(data_args, config, tokenizer, batches=None):
    data, stream = build_stream(get_stage("instruct"), data_args, config, tokenizer, rank=0)
    return data, stream, list(stream.rows(batches))


def test_packed_rows_carry_labels_only_on_answers(tmp_path, codellama_tokenizer):
    dialogs = write_dialogs(tmp_path / "dialogs.jsonl")
    # small rehearsal sources: with the embedded corpus, "all_exhausted" repeats the few dialogs millions of times
    code, nl = tmp_path / "code", tmp_path / "nl"
    for folder, suffix, text in ((code, "py", "def f{i}(x):\n    return x + {i}\n"), (nl, "md", "Note {i}: words.\n")):
        folder.mkdir()
        for i in range(6):
            (folder / f"doc{i}.{suffix}").write_text(text.format(i=i) * (i + 2))
    sources = json.dumps({"instruct": [str(dialogs)], "code": [str(code)], "nl": [str(nl)]})
    _, data_args, config = stage_config(tmp_path, "--mixture_sources", sources, "--max_steps", "16")
    data, stream, packed = _rows(data_args, config, codellama_tokenizer)
    assert len(packed) == config.plan.max_steps * config.plan.sequences_per_step == 64  # one process
    assert data.info["mixture_weights"] == {"instruct": 0.92, "code": 0.06, "nl": 0.02}
    assert stream.counts["skipped: invalid dialog"] > 0 and stream.counts["skipped: no assistant answer"] > 0
    assert stream.counts["skipped: dialog longer than seq_len 256"] > 0
    expected = {}
    for dialog in GOOD:
        ids, labels = chat.encode_dialog(codellama_tokenizer, dialog[:-1] if dialog[-1]["role"] == "user" else dialog)
        expected[tuple(ids)] = labels
    batch = PackedCollator()(packed)
    seen_dialogs = documents = 0
    for b, row in enumerate(packed):
        ids, labels, positions = (batch[k][b].tolist() for k in ("input_ids", "labels", "position_ids"))
        start = 0
        for length in row["seq_lengths"]:
            segment = tuple(ids[start : start + length])
            assert positions[start : start + length] == list(range(length))
            if segment in expected:  # a dialog: labels exactly those of Meta's encoding (answers and their </s>)
                assert labels[start : start + length] == expected[segment]
                seen_dialogs += 1
            else:  # a rehearsal document (or a chunk of a long one): every token but the first
                assert labels[start : start + length] == [chat.IGNORE_INDEX, *segment[1:]]
                documents += 1
            start += length
        assert set(labels[start:]) <= {chat.IGNORE_INDEX}  # padding
    assert seen_dialogs >= len(GOOD) and documents >= 2
    _, _, again = _rows(data_args, config, codellama_tokenizer)  # the same rows in every run
    assert [r["input_ids"].tolist() for r in again] == [r["input_ids"].tolist() for r in packed]


def test_dialogs_only_without_rehearsal(tmp_path, tiny_tokenizer):
    dialogs = write_dialogs(tmp_path / "dialogs.jsonl")
    recipe = yaml.safe_load(TINY.read_text())
    recipe = {
        k: v for k, v in recipe.items() if k not in ("mixture_sources", "instruct_fim_rate")
    }  # no code rehearsal
    recipe.update(dataset_mixture="none", dataset_sources=[str(dialogs)], data_streams_per_process=1)
    (tmp_path / "dialogs_only.yaml").write_text(yaml.safe_dump(recipe))
    _, data_args, config = stage_config(tmp_path, config_file=tmp_path / "dialogs_only.yaml")
    data, _, packed = _rows(data_args, config, tiny_tokenizer, batches=4)
    assert data.info["mixture_weights"] == {"instruct": 1.0}
    encoded = {tuple(chat.encode_dialog(tiny_tokenizer, d[:-1] if d[-1]["role"] == "user" else d)[0]) for d in GOOD}
    for row in packed:
        starts = [0, *itertools.accumulate(row["seq_lengths"])]
        assert all(tuple(row["input_ids"][s:e]) in encoded for s, e in itertools.pairwise(starts))


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        ({"mixture_sources": "{}"}, ValueError, "no 'instruct' entry"),
        ({"dataset_mixture": "code"}, ValueError, "reserves no share"),
        ({"fim_rate": "0.9"}, ValueError, "never FIM-transforms its dialogs"),
        ({"mixture_sources": '{"instruct": ["stdlib"], "python": ["x"]}'}, ValueError, "'python'"),
        ({"mixture_sources": '{"instruct": ["DOES/NOT/EXIST"]}'}, FileNotFoundError, "DOES/NOT/EXIST"),
        ({"mixture_sources": '{"instruct": ["DIALOGS_NO_MESSAGES"]}'}, ValueError, "needs a 'messages' column"),
    ],
)
def test_bad_instruct_data_is_a_clear_error(tmp_path, tiny_tokenizer, overrides, error, message):
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"prompt": "x", "completion": "y"}) + "\n")
    argv = [x for k, v in overrides.items() for x in (f"--{k}", v.replace("DIALOGS_NO_MESSAGES", str(other)))]
    _, data_args, config = stage_config(tmp_path, *argv)
    with pytest.raises(error, match=message):
        _rows(data_args, config, tiny_tokenizer, batches=1)


def test_stdlib_dialog_code_is_exactly_what_ast_cuts_from_the_source():
    """The dialogs' answers are cut from lines split once per file: the same text as ast.get_source_segment, with
    multi-byte characters, \\r\\n and \\r line ends, a form feed inside a line, and a real standard-library module."""
    import ast
    import inspect

    from codellama_hf.data.sft import _LINE, _source_segment

    synthetic = (
        'x = "é€"; y = 1\r\ndef f(a="ü"):\r\n    """Doc\x0cwith a form feed."""\r    return a  # ✓\n\nz = [\n  1]'
    )
    for source in (synthetic, inspect.getsource(json.decoder)):
        lines = _LINE.findall(source)
        nodes = [n for n in ast.walk(ast.parse(source)) if hasattr(n, "end_col_offset")]
        assert len(nodes) > 10
        for node in nodes:
            assert _source_segment(lines, node) == ast.get_source_segment(source, node)
