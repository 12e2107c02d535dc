"""A stage's document table built once, before the launch: parallel token counts (the same as one process's), the
schedule kept in the datasets cache and found again, and `codellama-hf data prepare` refusing bad settings by name."""

from __future__ import annotations

import datasets
import pytest
import yaml
from transformers import AutoTokenizer

from codellama_hf.cli import main
from codellama_hf.corpus import token_balance
from codellama_hf.corpus.embedded import embedded_corpus
from codellama_hf.corpus.mixture import PRESETS, load_mixture
from codellama_hf.corpus.token_balance import count_tokens, mixture_cache_dir, token_shares
from codellama_hf.training.config import config_path, parse_stage_config


@pytest.fixture
def no_datasets_cache(monkeypatch):
    """Every count and schedule computed afresh (nothing read back from an earlier run), by as many processes as
    asked for, however few the documents."""
    monkeypatch.setattr(token_balance, "DOCUMENTS_PER_PROCESS", 1)
    datasets.disable_caching()
    yield
    datasets.enable_caching()


def test_parallel_counts_equal_one_process_and_the_tokenizer(llama2_dir, no_datasets_cache):
    tokenizer = AutoTokenizer.from_pretrained(str(llama2_dir))
    texts = embedded_corpus("nl")["text"][:600]
    documents = datasets.Dataset.from_dict({"text": texts})
    one = count_tokens(documents, tokenizer, num_proc=1)["tokens"]
    two = count_tokens(documents, tokenizer, num_proc=2)["tokens"]
    assert one == two == [max(1, len(ids)) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def test_token_shares_from_two_processes_equal_one_process(llama2_dir, no_datasets_cache):
    """The whole token-balanced mixture, counted by 1 and by 2 processes: the same rows, the same realised shares,
    each within 1 point of Table 1."""
    one = load_mixture("python", seed=3, max_documents=400, num_proc=1, tokenizer=llama2_dir)
    two = load_mixture("python", seed=3, max_documents=400, num_proc=2, tokenizer=llama2_dir)
    assert one["tokens"] == two["tokens"] and one["path"] == two["path"]
    assert token_shares(one) == token_shares(two)
    for name, weight in PRESETS["python"].weights.items():
        assert abs(token_shares(two)[name] - weight) < 0.01, (name, token_shares(two)[name])


def _folder_mixture(root, sizes: dict[str, int]):
    """A mixture YAML whose components are folders of small files written here (cached in this test's caches)."""
    components = {}
    for i, (name, files) in enumerate(sizes.items()):
        folder = root / name
        folder.mkdir()
        for j in range(files):
            (folder / f"m{j}.py").write_text(f"def f_{j}(x):\n    return x * {j + i}\n" * (1 + j % 7))
        components[name] = {"weight": round(1 / len(sizes), 6), "sources": [str(folder)]}
    components[name]["weight"] = round(1 - sum(c["weight"] for c in list(components.values())[:-1]), 6)
    path = root / "mixture.yaml"
    path.write_text(yaml.safe_dump({"components": components}))
    return path


def test_a_second_call_memory_maps_the_schedule(llama2_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    mixture = _folder_mixture(tmp_path, {"code": 60, "nl_code": 40, "nl": 30})
    said = []
    first = load_mixture(mixture, seed=8, tokenizer=llama2_dir, announce=said.append)
    assert [m.split(" ")[0] for m in said] == ["counting"] * 3 + ["scheduling"]
    (folder,) = mixture_cache_dir().iterdir()
    indices = folder / "indices.arrow"
    written = indices.stat().st_mtime_ns
    said.clear()
    again = load_mixture(mixture, seed=8, tokenizer=llama2_dir, announce=said.append)
    assert said == [] and indices.stat().st_mtime_ns == written
    assert str(indices) in {entry["filename"] for entry in again.cache_files}
    assert again["text"] == first["text"] and again["tokens"] == first["tokens"]
    other = load_mixture(mixture, seed=9, tokenizer=llama2_dir, announce=said.append)
    assert [m.split(" ")[0] for m in said] == ["scheduling"]  # the counts are read back, not made again
    assert other["path"] != first["path"] and len(list(mixture_cache_dir().iterdir())) == 2


def test_prepare_names_a_bad_field_value_or_file(tmp_path, capsys):
    code = str(config_path("code"))
    assert main(["data", "prepare", "--config", code, "--fim_ratee", "0.3"]) == 2
    assert "--fim-ratee" in capsys.readouterr().err
    assert main(["data", "prepare", "--config", code, "--dataset_mixture", "nosuch"]) == 2
    assert "unknown mixture 'nosuch'" in capsys.readouterr().err
    assert main(["data", "prepare", "--config", code, "--num-proc", "0"]) == 2
    assert "--num-proc 0" in capsys.readouterr().err
    nameless = tmp_path / "nameless.yaml"
    nameless.write_text("output_dir: out\ndataset_mixture: code\n")
    assert main(["data", "prepare", "--config", str(nameless)]) == 2
    assert f"{nameless}: no `stage` key" in capsys.readouterr().err
    assert main(["data", "prepare", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_prepare_parses_a_gpu_config_on_a_cpu():
    """The 7B recipe asks for bf16, which a CPU refuses; preparing its data must not."""
    _, data_args, config = parse_stage_config("code", ["--config", str(config_path("code", "7b")), "--plan_only"])
    assert data_args.dataset_mixture == "code" and config.seed == 42


def test_stage_tables_read_datasets_names_into_arrow_not_streams():
    """A stage trains from a table: a `datasets` name (streamed by default) is prepared by load_dataset instead of
    being copied row by row from a stream by one process; a spec that says `streaming` keeps it."""
    from codellama_hf.corpus.mixture import map_style

    specs = map_style(["bigcode/the-stack-smol", {"dataset": "wikitext", "streaming": True}, "/data/code"])
    assert [s.streaming for s in specs] == [False, True, False]
    assert [s.dataset for s in specs[:2]] == ["bigcode/the-stack-smol", "wikitext"] and specs[2].path == "/data/code"
