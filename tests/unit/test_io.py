"""codellama_hf.io: outputs appear whole or not at all; readers and dtype names fail with messages naming the input."""

import json
import os

import pytest
import torch

from codellama_hf.io import (
    atomic_dir,
    atomic_file,
    changed_settings,
    read_json_object,
    read_yaml_mapping,
    torch_dtype,
    write_json,
    write_jsonl,
    write_text,
)


def test_atomic_file_replaces_only_on_success(tmp_path):
    path = tmp_path / "sub" / "report.md"
    write_text(path, "first")
    with pytest.raises(RuntimeError), atomic_file(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert path.read_text() == "first"
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.md"]  # no partial file left behind
    with atomic_file(tmp_path / "plot.png") as tmp:
        assert tmp.suffix == ".png" and tmp.name.startswith(".plot.partial-")  # savefig reads the format there
        tmp.write_bytes(b"png")
    assert (tmp_path / "plot.png").read_bytes() == b"png"


def test_json_writers_and_reader(tmp_path):
    path = write_json(tmp_path / "a.json", {"b": 1, "a": tmp_path}, sort_keys=True)
    assert path.read_text() == json.dumps({"a": str(tmp_path), "b": 1}, indent=2, sort_keys=True) + "\n"
    assert read_json_object(path) == {"a": str(tmp_path), "b": 1}
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"x": "é"}, {"x": 2}])
    assert rows.read_text(encoding="utf-8") == '{"x": "é"}\n{"x": 2}\n'
    with pytest.raises(FileNotFoundError, match=r"missing\.json: not found \(model config\)"):
        read_json_object(tmp_path / "missing.json", "model config")
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(ValueError, match=r"list\.json: expected a JSON object"):
        read_json_object(tmp_path / "list.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match=r"bad\.json: not valid JSON"):
        read_json_object(tmp_path / "bad.json")


def test_atomic_dir_overwrite_and_shared(tmp_path):
    out = tmp_path / "model"
    with atomic_dir(out) as tmp:
        (tmp / "weights").write_text("v1")
    with pytest.raises(FileExistsError, match="pass --overwrite"), atomic_dir(out):
        pass
    with pytest.raises(ValueError), atomic_dir(out, overwrite=True) as tmp:
        (tmp / "weights").write_text("v2")
        raise ValueError("failed half way")
    assert (out / "weights").read_text() == "v1" and sorted(os.listdir(tmp_path)) == ["model"]
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "weights").write_text("v2")
    assert (out / "weights").read_text() == "v2" and sorted(os.listdir(tmp_path)) == ["model"]
    # a shared cache: another process finishing the same build first keeps its copy, ours is dropped
    cache = tmp_path / "cache"
    with atomic_dir(cache, shared=True) as ours:
        with atomic_dir(cache, shared=True) as theirs:
            (theirs / "data").write_text("theirs")
        (ours / "data").write_text("ours")
    assert (cache / "data").read_text() == "theirs" and sorted(os.listdir(tmp_path)) == ["cache", "model"]


def test_read_yaml_mapping(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere\.yaml: no such push config"):
        read_yaml_mapping(tmp_path / "nowhere.yaml", "push config")
    (tmp_path / "empty.yaml").write_text("")
    assert read_yaml_mapping(tmp_path / "empty.yaml") == {}
    (tmp_path / "list.yaml").write_text("- a\n")
    with pytest.raises(ValueError, match=r"list\.yaml: a mixture file must be a YAML mapping"):
        read_yaml_mapping(tmp_path / "list.yaml", "mixture file")
    (tmp_path / "bad.yaml").write_text("a: [\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: not valid YAML"):
        read_yaml_mapping(tmp_path / "bad.yaml")


def test_torch_dtype_names():
    assert torch_dtype("bfloat16") is torch.bfloat16 and torch_dtype("bf16") is torch.bfloat16
    assert torch_dtype("fp16") is torch.float16 and torch_dtype(torch.float32) is torch.float32
    assert torch_dtype("auto", auto="auto") == "auto" and torch_dtype("auto", auto=torch.float32) is torch.float32
    with pytest.raises(ValueError, match=r"dtype='int8': use auto, bfloat16, float16, float32"):
        torch_dtype("int8")
    with pytest.raises(ValueError, match=r"dtype=torch\.float64"):
        torch_dtype(torch.float64)
    with pytest.raises(ValueError, match="not accepted here"):
        torch_dtype("auto")


def test_changed_settings_names_each_changed_field(tmp_path):
    saved = {"seed": 0, "data": {"seq_len": 4096, "sources": ["a"]}, "extra": {}, "overwrite": False}
    now = {"seed": 0, "data": {"seq_len": 8192, "sources": ("a",)}, "overwrite": True, "out": tmp_path}
    assert changed_settings(saved, now, ignore=["overwrite"]) == (
        f"data.seq_len: 4096 -> 8192; extra: {{}} -> None; out: None -> {str(tmp_path)!r}"
    )
    assert changed_settings(saved, json.loads(json.dumps(saved))) == ""
