"""The corpus on real files: planted duplicates, filters, bad input, the embedded corpus and Table 1 mixtures."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import time
from collections import Counter

import pytest
from datasets import Dataset, load_from_disk

from codellama_hf.cli import main as cli_main
from codellama_hf.corpus import (
    PRESETS,
    BuildConfig,
    DedupConfig,
    FilterConfig,
    SkipCounter,
    build_corpus,
    deduplicate,
    embedded_corpus,
    get_mixture,
    load_mixture,
    read_sources,
)
from codellama_hf.corpus.embedded import KINDS, _hash_fraction, is_validation
from tests.helpers.corpus import CLEAN, PLANTED_SKIPS, STDLIB, _assert_one_version_each


def test_read_sources_counts_every_skip(tree):
    stats = SkipCounter()
    ds = read_sources([str(tree)], stats=stats)
    assert dict(stats) == PLANTED_SKIPS
    paths = set(ds["path"])
    clean = {f"src/{n}.py" for n in CLEAN}
    assert paths == clean | {"src/textwrap_renamed.py", "src/shlex_reformatted.py", "src/heapq_copy.py"}
    assert set(ds["language"]) == {"python"} and set(ds["source"]) == {str(tree)}
    # A cached re-read gives the same rows and the same counts.
    again = SkipCounter()
    assert list(read_sources([str(tree)], stats=again)["text"]) == list(ds["text"]) and again == stats


def test_dedup_removes_planted_near_duplicates_and_keeps_distinct_files(tree):
    ds = read_sources([str(tree)])
    out, stats = deduplicate(ds, DedupConfig())
    assert stats.exact_removed == 1  # heapq_copy.py
    assert stats.near_removed == 2 and stats.near_clusters == 2  # renamed variable, reformatted whitespace
    _assert_one_version_each(list(out["text"]), tree)
    order = [p for p in ds["path"] if p in set(out["path"])]
    assert list(out["path"]) == order  # the in-memory path keeps the input order
    only_near, stats = deduplicate(ds, DedupConfig(exact=False))
    assert len(only_near) == len(CLEAN) and stats.near_removed == 3  # the exact copy is a near-duplicate too


def test_signatures_estimate_jaccard_and_follow_datatrove_format(tree, tmp_path):
    """Our MinHash estimates the Jaccard similarity of the word 5-gram sets; the code tokenizer plugs into
    datatrove's stock signature step, which then sees the same 5-grams."""
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
    from datatrove.utils.hashing import HashConfig

    from codellama_hf.corpus.dedup import CodeWordTokenizer, estimated_jaccard, minhash, shingle_hashes

    config = DedupConfig()
    texts = {p.name: p.read_text() for p in sorted((tree / "src").glob("*.py")) if p.stat().st_size > 1000}
    pairs = [("textwrap.py", "textwrap_renamed.py"), ("shlex.py", "shlex_reformatted.py"), ("glob.py", "csv.py")]
    for a, b in pairs:
        sa, sb = set(shingle_hashes(texts[a], 5).tolist()), set(shingle_hashes(texts[b], 5).tolist())
        true = len(sa & sb) / len(sa | sb)
        assert abs(estimated_jaccard(minhash(texts[a], config), minhash(texts[b], config)) - true) < 0.1, (a, b)
    assert estimated_jaccard(minhash(texts["glob.py"], config), minhash(texts["csv.py"], config)) < 0.2
    # sha1: datatrove 0.10.1's default xxhash path passes str, which xxhash 4.1 refuses
    stock_config = MinhashConfig(hash_config=HashConfig(hash_fc="sha1"))
    stock = MinhashDedupSignature(str(tmp_path), stock_config, language=CodeWordTokenizer())
    words = CodeWordTokenizer().word_tokenize(texts["glob.py"])
    assert words[:4] == ["Filename", "globbing", "utility", "import"]
    assert len(stock.get_shingles(texts["glob.py"])) > 0


def test_bad_input_fails_clearly_without_partial_output(tree, tmp_path, capsys):
    with pytest.raises(ValueError, match=f"no documents kept from {tree / 'empty'}.*empty_source"):
        build_corpus(BuildConfig(sources=[str(tree / "empty")], out=str(tmp_path / "out"), num_proc=1))
    with pytest.raises(FileNotFoundError, match="missing"):
        read_sources([str(tmp_path / "missing")])
    with pytest.raises(ValueError, match="unknown field"):
        read_sources([{"path": str(tree), "colour": "blue"}])
    with pytest.raises(ValueError, match="min_alphanumeric"):
        FilterConfig(min_alphanumeric=2.0)
    with pytest.raises(ValueError, match="threshold"):
        DedupConfig(threshold=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing half-written
    assert cli_main(["corpus", "build", str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_build_config_yaml_with_cli_overrides(tree, tmp_path, capsys):
    config = tmp_path / "corpus.yaml"
    config.write_text(
        f"sources: ['{tree}']\nvalidation_fraction: 0\nfilters: {{max_line_length: 5000}}\n"
        "dedup: {near: false, num_perm: 64}\nexecutor: {kind: local, tasks: 1}\n"
    )
    out = tmp_path / "out"
    assert cli_main(["corpus", "build", "--config", str(config), "--out", str(out), "--max-line-length", "2000"]) == 0
    summary = json.loads((out / "corpus_summary.json").read_text())
    assert "long_lines" in summary["skipped"]  # the command line's 2000 beat the file's 5000 (the line has 3008)
    assert summary["dedup"]["near_removed"] == 0 and summary["dedup"]["exact_removed"] == 1  # near dedup off
    assert summary["splits"] == {"train": len(CLEAN) + 2, "validation": 0}
    config.write_text(f"sources: ['{tree}']\ndedup: {{treshold: 0.9}}\n")
    assert cli_main(["corpus", "build", "--config", str(config), "--out", str(tmp_path / "bad")]) == 2
    assert "unknown dedup field(s) ['treshold']" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    config.write_text(f"sources: ['{tree}']\nexecutor: {{kind: ray}}\n")
    if importlib.util.find_spec("ray") is None:
        assert cli_main(["corpus", "build", "--config", str(config), "--out", str(tmp_path / "ray")]) == 2
        assert "pip install 'datatrove[ray]'" in capsys.readouterr().err


def test_license_and_language_filter_steps(tmp_path):
    """Licence (from the repository's LICENSE file) and language (from the extension) as datatrove filter steps."""
    mit, unknown = tmp_path / "mit", tmp_path / "unknown"
    for repo in (mit, unknown):
        repo.mkdir()
        shutil.copy(STDLIB / "bisect.py", repo / f"{repo.name}.py")
        shutil.copy(STDLIB / "heapq.py", repo / f"{repo.name}_heap.py")
    (mit / "LICENSE").write_text("MIT License\n\nPermission is hereby granted, free of charge, to any person ...\n")
    (mit / "notes.md").write_text("# Notes\n\nThese notes explain the bisect module in plain words.\n" * 3)
    config = BuildConfig(
        sources=[str(mit), str(unknown)],
        out=str(tmp_path / "out"),
        licenses=["MIT"],
        languages=["python"],
        validation_fraction=0,
        num_proc=1,
    )
    summary = build_corpus(config)
    assert summary.skipped == {"other_language": 2, "unknown_license": 2}  # notes.md and LICENSE; the unknown repo
    rows = read_sources(str(tmp_path / "out")).to_list()
    assert sorted((r["path"], r["license"]) for r in rows) == [("mit.py", "MIT"), ("mit_heap.py", "MIT")]


def test_dataset_file_and_saved_dataset_sources(tmp_path):
    rows = [
        {"content": (STDLIB / "bisect.py").read_text(), "lang": "Python", "path": "a/bisect.py", "license": "PSF"},
        {"content": "var a=1;" * 400, "lang": "JavaScript", "path": "b/x.js", "license": None},
        {"content": (STDLIB / "glob.py").read_text(), "lang": "Python", "path": "vendor/glob.py", "license": None},
        {"content": "", "lang": "Python", "path": "c/empty.py", "license": None},
    ]
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    stats = SkipCounter()
    ds = read_sources([{"path": str(data), "text_column": "content", "label": "mine"}], stats=stats)
    assert ds.to_list() == [
        {"text": rows[0]["content"], "language": "python", "source": "mine", "path": "a/bisect.py", "license": "PSF"}
    ]
    assert dict(stats) == {"minified": 1, "vendored": 1, "too_small": 1}
    saved = tmp_path / "saved"
    Dataset.from_list(rows).save_to_disk(str(saved))
    stream_stats = SkipCounter()
    streamed = read_sources([{"path": str(saved), "text_column": "content"}], streaming=True, stats=stream_stats)
    assert [r["path"] for r in streamed] == ["a/bisect.py"] and sum(stream_stats.values()) == 3
    with pytest.raises(ValueError, match="no text column 'text'"):
        read_sources([str(data)])
    # The builder reads jsonl through datatrove's JsonlReader and saved datasets through its HF reader.
    for name, spec in (("jsonl", {"path": str(data)}), ("saved", {"path": str(saved)})):
        spec |= {"text_column": "content", "label": "mine"}
        summary = build_corpus(BuildConfig(sources=[spec], out=str(tmp_path / f"built_{name}"), validation_fraction=0))
        assert summary.splits == {"train": 1, "validation": 0}
        assert summary.skipped == {"minified": 1, "vendored": 1, "too_small": 1}
        assert read_sources(str(tmp_path / f"built_{name}")).to_list() == ds.to_list()


def test_git_checkout_lists_tracked_files_and_clones(tmp_path):
    repo = tmp_path / "git"
    repo.mkdir()
    shutil.copy(STDLIB / "bisect.py", repo / "bisect.py")
    shutil.copy(STDLIB / "copy.py", repo / "ignored.py")
    (repo / ".gitignore").write_text("ignored.py\n")
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    for cmd in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "x"]):
        subprocess.run(["git", "-C", str(repo), *cmd], check=True, env=env)
    shutil.copy(STDLIB / "glob.py", repo / "untracked.py")
    assert list(read_sources([str(repo)])["path"]) == ["bisect.py"]
    with pytest.raises(ValueError, match="other_language"):  # a build keeping only C finds nothing, and says why
        build_corpus(BuildConfig(sources=[str(repo)], out=str(tmp_path / "c"), languages=["c"], num_proc=1))
    cloned = read_sources([f"git+file://{repo}"])
    assert list(cloned["path"]) == ["bisect.py"] and list(cloned["source"]) == [f"git+file://{repo}"]
    config = BuildConfig(sources=[f"git+file://{repo}"], out=str(tmp_path / "g"), num_proc=1, validation_fraction=0)
    assert build_corpus(config).splits == {"train": 1, "validation": 0}
    built = read_sources(str(tmp_path / "g")).to_list()
    assert [(r["path"], r["source"]) for r in built] == [("bisect.py", f"git+file://{repo}")]


def test_embedded_corpus_kinds_splits_and_cache():
    for kind in KINDS:
        train, validation = embedded_corpus(kind), embedded_corpus(kind, "validation")
        assert {"text", "language", "source", "path", "license"} <= set(train.column_names)
        assert len(train) > 500 and len(validation) > 10
        assert not {(s, p) for s, p in zip(train["source"], train["path"], strict=False)} & set(
            zip(validation["source"], validation["path"], strict=False)
        )
    python = embedded_corpus("python", max_documents=200)
    assert len(python) == 200 and set(python["language"]) == {"python"}
    assert all(p.endswith(".py") for p in python["path"])
    assert "PSF-2.0" in set(python["license"]) and len(set(python["text"])) == 200
    assert len(set(embedded_corpus("code")["language"])) > 1
    assert "docstring" in set(embedded_corpus("nl_code")["language"])
    start = time.perf_counter()
    assert list(embedded_corpus("python", max_documents=200)["text"]) == list(python["text"])  # deterministic, cached
    assert time.perf_counter() - start < 5
    with pytest.raises(ValueError, match="unknown embedded corpus kind"):
        embedded_corpus("prose")


def _assert_proportions(components: list[str], weights: dict[str, float]):
    n, counts = len(components), Counter(components)
    assert set(counts) == set(weights)
    for name, p in weights.items():
        sigma = math.sqrt(n * p * (1 - p))
        assert abs(counts[name] - n * p) < 4.5 * sigma, (name, counts[name], n * p)


@pytest.mark.parametrize("preset", ["code", "python"])
def test_mixture_matches_table1_probabilities(preset):
    mixed = load_mixture(preset, seed=1, balance="documents")  # document shares only when asked for
    assert len(mixed) >= 10_000 and mixed.column_names == ["text", "source", "path", "component"]
    _assert_proportions(mixed.select(range(10_000))["component"], PRESETS[preset].weights)


def test_rows_without_a_path_are_held_out_one_by_one(tmp_path):
    """A source whose records carry only text (path "") is split per row, about 5% validation, not wholesale into
    one split; a source with paths keeps the by-file rule: every file's rows in one split, as before."""
    from codellama_hf.corpus.mixture import Component, Mixture

    def note(i):
        return f"Note {i}.\n" + "The quick brown fox jumps over the lazy dog.\n" * (5 + i % 7)

    pathless, with_paths = tmp_path / "pathless.jsonl", tmp_path / "with_paths.jsonl"
    pathless.write_text("\n".join(json.dumps({"text": note(i)}) for i in range(200)))
    with_paths.write_text("\n".join(json.dumps({"text": note(i), "path": f"doc{i % 40}.md"}) for i in range(200)))

    def splits(source, corpus_seed=0):  # labelled "notes": the split does not follow tmp_path
        spec = {"path": str(source), "label": "notes"}
        mixture = Mixture("m", (Component("nl", 1.0, sources=(spec,)),), balance="documents")
        return [load_mixture(mixture, split, corpus_seed=corpus_seed) for split in ("train", "validation")]

    train, validation = splits(pathless)
    assert set(train["path"]) == set(validation["path"]) == {""}
    assert len(train) + len(validation) == 200 and not set(train["text"]) & set(validation["text"])
    assert 2 <= len(validation) <= 20, len(validation)  # ~5% of 200 rows; the whole source was 0 or 200 before
    expected = {note(i) for i in range(200) if is_validation(0, "notes", "", text=note(i))}
    assert set(validation["text"]) == expected  # a function of (seed, source, text): not of order or processes
    assert set(splits(pathless, corpus_seed=1)[1]["text"]) != expected

    train, validation = splits(with_paths)
    assert len(train) + len(validation) == 200 and not set(train["path"]) & set(validation["path"])
    held = {f"doc{i}.md" for i in range(40) if _hash_fraction("split", 0, "notes", f"doc{i}.md") < 0.05}
    assert held and set(validation["path"]) == held  # the by-file hash the embedded corpus's splits were made with


def test_bytes_balance_gives_table1_shares_of_bytes():
    """Table 1's shares are of tokens: balance="bytes" reweights documents by component size to match them."""
    sample = load_mixture("code", balance="bytes", seed=4).select(range(10_000))
    by_component = Counter()
    for component, text in zip(sample["component"], sample["text"], strict=False):
        by_component[component] += len(text.encode("utf-8", "surrogatepass"))
    total = sum(by_component.values())
    for name, weight in PRESETS["code"].weights.items():
        assert abs(by_component[name] / total - weight) < 0.25 * weight, (name, by_component[name] / total)
    documents = Counter(sample["component"])
    assert documents["nl_code"] / len(sample) > 0.15  # short docstring documents are drawn far more often than 8%


def test_streaming_mixture_and_instruct_rehearsal(llama2_dir):
    from codellama_hf.corpus.token_balance import token_shares

    streamed = load_mixture("code", streaming=True, seed=2, balance="documents")
    _assert_proportions([row["component"] for row in streamed.take(10_000)], PRESETS["code"].weights)
    by_tokens = load_mixture("code", streaming=True, seed=2, tokenizer=llama2_dir)
    for name, share in token_shares(by_tokens, 400).items():
        assert abs(share - PRESETS["code"].weights[name]) < 0.03, (name, share)
    rehearsal = get_mixture("instruct_rehearsal")
    assert rehearsal.weights == {"code": 0.06, "nl": 0.02} and rehearsal.reserved == pytest.approx(0.92)
    with pytest.raises(ValueError, match="92%"):
        load_mixture("instruct_rehearsal")
    instruct = Dataset.from_dict({"text": [f"[INST] question {i} [/INST] answer" for i in range(3000)]})
    mixed = load_mixture("instruct_rehearsal", extra={"instruct": instruct}, seed=3, balance="documents")
    _assert_proportions(mixed.select(range(10_000))["component"], {"code": 0.06, "nl": 0.02, "instruct": 0.92})


def test_user_yaml_mixture_with_local_sources(tree, tmp_path, capsys):
    config = tmp_path / "mix.yaml"
    config.write_text(
        f"preset: code\ncomponents:\n  code:\n    sources: ['{tree}']\n    languages: [python]\n"
        "stopping_strategy: all_exhausted\n"
    )
    mixture = get_mixture(config)
    assert mixture.weights == PRESETS["code"].weights and mixture.components[0].sources == (str(tree),)
    mixed = load_mixture(config, seed=0)
    code_texts = {row["text"] for row in mixed if row["component"] == "code"}
    assert code_texts and code_texts <= set(read_sources([str(tree)])["text"])
    overridden = load_mixture("python", sources={"python": str(tree)}, max_documents=5, seed=0)
    python_texts = [row["text"] for row in overridden if row["component"] == "python"]
    assert python_texts and set(python_texts) <= set(read_sources([str(tree)])["text"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("components:\n  code: 0.8\n  nl: 0.1\n")
    with pytest.raises(ValueError, match=r"sum to 0\.9, not 1"):
        load_mixture(bad)
    bad.write_text("components:\n  code: 1.2\n  nl: -0.2\n")
    with pytest.raises(ValueError, match="weights must be > 0"):
        get_mixture(bad)
    with pytest.raises(ValueError, match="unknown mixture"):
        get_mixture("code-llama")
    assert cli_main(["corpus", "mix", str(bad), "--out", str(tmp_path / "m"), "--num-samples", "10"]) == 2
    assert "bad.yaml" in capsys.readouterr().err and not (tmp_path / "m").exists()
    assert cli_main(["corpus", "mix", str(config), "--out", str(tmp_path / "m"), "--num-samples", "300"]) == 0
    sample = load_from_disk(str(tmp_path / "m"))
    assert len(sample) == 300 and set(sample["component"]) == {"code", "nl_code", "nl"}
