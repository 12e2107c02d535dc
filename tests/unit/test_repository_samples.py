"""Repository-level samples (data/repository.py) with Code Llama's real tokenizer: whole files, exact headers, FIM
inside the last file, deterministic decisions, bad input counted."""

from __future__ import annotations

import itertools
import logging
import re

import datasets
import pytest

from codellama_hf.data.fim import KIND_NAMES, PLAIN, PSM, SPM, FIMConfig
from codellama_hf.data.repository import COLUMN, LONG_FILE, RepositoryEncoder, group_repositories
from codellama_hf.repository import render_file
from codellama_hf.tokenizer import decode_infilling, infill_ids


def _corpus() -> datasets.Dataset:
    rows = []
    for repo in range(3):
        files = {
            "pkg/__init__.py": "",
            "pkg/core.py": "from pkg import util\n\n\ndef run(x):\n    return util.double(x) + 1\n",
            "pkg/util.py": "".join(f"def helper_{i}(x):\n    return x * {i}\n\n\n" for i in range(5))
            + "def double(x):\n    return 2 * x\n",
            "app.py": "import pkg.core\n\nprint(pkg.core.run(3))",  # no final newline
            "README.py": "# notes\n" * 3,
        }
        for path, text in files.items():
            rows.append({"text": text, "source": f"repo{repo}", "path": path, "component": "code"})
    rows.append({"text": None, "source": "repo0", "path": "broken.py", "component": "code"})
    rows.append({"text": "x = 1\n" * 400, "source": "big", "path": "huge.py", "component": "code"})
    return datasets.Dataset.from_list(rows)


def test_grouping_and_dependency_order(caplog):
    table = group_repositories(_corpus())
    assert "not text" in caplog.text
    names = [r["name"] for r in table[COLUMN]]
    assert names == ["big", "repo0", "repo1", "repo2"] and set(table["component"]) == {"code"}
    paths = [f["path"] for f in table[COLUMN][1]["files"]]
    # util before core (core imports it), core before app; the rest in path order
    assert paths == ["README.py", "pkg/__init__.py", "pkg/util.py", "pkg/core.py", "app.py"]
    with pytest.raises(ValueError, match=r"\['source', 'path'\]"):
        group_repositories(datasets.Dataset.from_dict({"text": ["x"]}))


def _text_of(sample: list[int], tokenizer) -> tuple[str, tuple[int, int] | None]:
    """The repository text a sample holds, and the middle's [start, end) in it for a FIM sample."""
    ids = infill_ids(tokenizer)
    assert sample[0] == ids.bos
    if sample[-1] == ids.eos:
        return tokenizer.decode(sample[1:-1]), None
    assert sample[1] == ids.prefix and sample[-1] == ids.eot
    cut = sample.index(ids.middle)
    if sample[2] == ids.suffix:  # SPM: suffix, then prefix + middle
        suffix = decode_infilling(tokenizer, sample[3:cut])
        prefix_middle = tokenizer.decode(sample[cut + 1 : -1])
        return prefix_middle + suffix, (None, len(prefix_middle))
    at = sample.index(ids.suffix)
    prefix = tokenizer.decode(sample[2:at])
    suffix = decode_infilling(tokenizer, sample[at + 1 : cut])
    middle = decode_infilling(tokenizer, sample[cut + 1 : -1])
    return prefix + middle + suffix, (len(prefix), len(prefix) + len(middle))


def test_samples_keep_files_whole_with_exact_headers(codellama_tokenizer):
    table = group_repositories(_corpus())
    seq_len = 160
    encoder = RepositoryEncoder(codellama_tokenizer, seq_len, FIMConfig(rate=0.9, seed=3))
    kinds_seen = set()
    for repository, epoch in itertools.product(table[COLUMN][1:], range(4)):
        samples, kinds, counts = encoder.samples(repository, epoch)
        assert len(samples) > 1, "the repository is cut into several samples"
        files = repository["files"]
        rendered = [render_file(f["path"], f["text"]) for f in files]
        position = 0
        for sample, kind in zip(samples, kinds, strict=True):
            assert len(sample) <= seq_len
            text, middle = _text_of(sample, codellama_tokenizer)
            # whole files, in order, each after its exact header; nothing lost or repeated
            paths = re.findall(r"^# file: (.+)\n", text, flags=re.M)
            count = len(paths)
            assert paths == [f["path"] for f in files[position : position + count]]
            assert text == "".join(rendered[position : position + count])
            if kind in (PSM, SPM):
                last = text.rindex(f"# file: {paths[-1]}\n") + len(f"# file: {paths[-1]}\n")
                start, end = middle
                assert (start is None or start >= last) and end >= last  # the span is inside the last file
            position += count
            kinds_seen.add(kind)
        assert position == len(files)
        assert sum(counts.values()) == len(samples)
    assert kinds_seen == {PLAIN, PSM, SPM}


def test_decisions_are_deterministic_by_seed_repository_epoch(codellama_tokenizer):
    table = group_repositories(_corpus())
    repos = table[COLUMN][1:]
    encoder = RepositoryEncoder(codellama_tokenizer, 160, FIMConfig(rate=0.5, seed=0))
    forward = [encoder.samples(r, 0)[0] for r in repos]
    backward = [encoder.samples(r, 0)[0] for r in reversed(repos)][::-1]
    assert forward == backward  # nothing depends on the order or company of repositories
    epoch1 = [encoder.samples(r, 1)[0] for r in repos]
    other_seed = RepositoryEncoder(codellama_tokenizer, 160, FIMConfig(rate=0.5, seed=1))
    assert epoch1 != forward and [other_seed.samples(r, 0)[0] for r in repos] != forward
    # every FIM sample of a rate-1 run: both layouts appear at the paper's 50/50 split
    always = RepositoryEncoder(codellama_tokenizer, 160, FIMConfig(rate=1.0, spm_rate=0.5, seed=0))
    kinds = [k for r in repos for epoch in range(6) for k in always.samples(r, epoch)[1]]
    assert PLAIN not in kinds and {PSM, SPM} <= set(kinds)


def test_long_files_and_bad_input_are_counted(codellama_tokenizer, caplog):
    caplog.set_level(logging.INFO, logger="codellama_hf.data.repository")
    table = group_repositories(_corpus())
    encoder = RepositoryEncoder(codellama_tokenizer, 160, FIMConfig(rate=0.9))
    big = table[COLUMN][0]
    examples, counts = encoder([big], None, 0)
    assert counts[LONG_FILE] == 1 and len(examples) == 1 and len(examples[0].ids) > 160  # packing chunks it
    assert "huge.py is" in caplog.text
    samples, _, counts = encoder.samples({"name": "r", "files": []}, 0)
    assert samples == [] and counts == {"empty repository": 1}
    plain = RepositoryEncoder(codellama_tokenizer, 160, None)
    _, counts = plain(table[COLUMN][1:2], None, 0)
    assert set(counts) == {KIND_NAMES[PLAIN]}


def test_repositories_through_the_stream(codellama_tokenizer):
    from codellama_hf.data.stream import PackedStream, StreamSettings

    table = group_repositories(_corpus())
    settings = StreamSettings(
        seq_len=160, micro_batch=2, world_size=1, streams_per_process=1, seed=0, chunk_documents=4, total_batches=3
    )
    encoder = RepositoryEncoder(codellama_tokenizer, 160, FIMConfig(rate=0.9))
    stream = PackedStream(table, encoder, settings, rank=0, pad_id=0, text_column=COLUMN)
    rows = list(stream.rows())
    assert len(rows) == 6 and all(len(r["input_ids"]) == 160 for r in rows)
    assert stream.counts[LONG_FILE] >= 1


def test_mixture_keeps_source_and_path_so_repositories_group(tmp_path):
    """load_mixture's rows keep each file's source and path: repository samples work on a mixture."""
    from codellama_hf.corpus import load_mixture, read_sources
    from codellama_hf.corpus.embedded import is_validation

    corpus = tmp_path / "repos"
    for name in ("alpha", "beta"):
        for i in range(6):
            path = corpus / name / "pkg" / f"mod{i}.py"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"from pkg import mod{i - 1}\n\n\ndef f{i}():\n    return {i}\n" if i else "X = 0\n")
    mixture = tmp_path / "mix.yaml"
    mixture.write_text(f"components:\n  code: {{weight: 0.9, sources: ['{corpus}']}}\n  nl: 0.1\nbalance: documents\n")
    mixed = load_mixture(mixture, seed=0)
    assert mixed.column_names == ["text", "source", "path", "component"]
    code = mixed.filter(lambda c: c == "code", input_columns=["component"])
    read = read_sources([str(corpus)])
    expected = {(s, p) for s, p in zip(read["source"], read["path"], strict=True) if not is_validation(0, s, p)}
    assert set(zip(code["source"], code["path"], strict=True)) == expected
    nl = mixed.filter(lambda c: c == "nl", input_columns=["component"])
    assert all(s and p for s, p in zip(nl["source"], nl["path"], strict=True))  # the embedded corpus' own
    table = group_repositories(code, key_depth=1)
    names = [r["name"] for r in table[COLUMN]]
    assert names == [f"{corpus}/alpha", f"{corpus}/beta"]
    for row in table[COLUMN]:
        paths = [f["path"] for f in row["files"]]
        repo = row["name"].rsplit("/", 1)[1]
        assert sorted(paths) == sorted(p.split("/", 1)[1] for _, p in expected if p.split("/", 1)[0] == repo)
        assert len(paths) == len(set(paths))  # the repeats of an all_exhausted mixture collapse
        numbers = [int(p[len("pkg/mod") : -3]) for p in paths]
        # dependency order where the import resolves (mod{i} imports mod{i-1}), whatever was held out
        assert numbers == sorted(numbers)
    # rows of `extra` data have no path: filled with "" and left out of repositories, counted
    dialogs = datasets.Dataset.from_dict({"text": ["[INST] q [/INST] a"] * 50})
    rehearsal = load_mixture("instruct_rehearsal", extra={"instruct": dialogs}, seed=0, balance="documents")
    instruct = rehearsal.filter(lambda c: c == "instruct", input_columns=["component"])
    assert set(instruct["source"]) == {""} and set(instruct["path"]) == {""}
    assert len(group_repositories(instruct)) == 0
