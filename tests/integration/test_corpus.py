"""The corpus on real files: planted duplicates, filters, bad input, the embedded corpus and Table 1 mixtures."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from codellama_hf.corpus import (
    PRESETS,
    BuildConfig,
    build_corpus,
    embedded_corpus,
    load_mixture,
    read_sources,
)
from codellama_hf.corpus.mixture import mixture_from_dict
from tests.helpers import ROOT, run_cli
from tests.helpers.corpus import CLEAN, PLANTED_SKIPS, STDLIB, _assert_one_version_each


@pytest.mark.slow
def test_one_and_two_tasks_give_the_same_corpus(tmp_path):
    """Planted copies among 300 real files: 1 and 2 local tasks (two processes) keep the same documents."""
    rows = embedded_corpus("python", max_documents=300).to_list()
    src = tmp_path / "src"
    src.mkdir()
    for i, row in enumerate(rows):
        (src / f"{i:03d}.py").write_text(row["text"])
    for i, row in enumerate(rows[:20]):  # reformatted copies of the first 20
        (src / f"{i:03d}_copy.py").write_text(row["text"].replace("    ", "  "))
    kept = {}
    for tasks in (1, 2):
        out = tmp_path / f"out{tasks}"
        summary = build_corpus(BuildConfig(sources=[str(src)], out=str(out), num_proc=tasks, validation_fraction=0.1))
        kept[tasks] = _corpus_rows(out)
        assert len(list((out / "train").glob("*.parquet"))) == tasks
    assert kept[1] == kept[2]
    paths = {path for _, path, _ in kept[1]}
    for i in range(20):  # exactly one of each original and its copy
        assert (f"{i:03d}.py" in paths) != (f"{i:03d}_copy.py" in paths)
    assert summary.dedup["near_removed"] + summary.dedup["exact_removed"] >= 20


def _corpus_rows(out: Path) -> set:
    import pyarrow.parquet as pq

    rows = set()
    for split in ("train", "validation"):
        for shard in (out / split).glob("*.parquet"):
            rows |= {(split, r["path"], r["text"]) for r in pq.read_table(shard).to_pylist()}
    return rows


@pytest.mark.slow
def test_cli_build_writes_parquet_shards_the_loaders_read(tree, tmp_path, tiny_tokenizer_dir):
    out = tmp_path / "corpus"
    result = run_cli(
        "corpus",
        "build",
        str(tree),
        "--out",
        str(out),
        "--tokenizer",
        str(tiny_tokenizer_dir),
        "--validation-fraction",
        "0.2",
        "--seed",
        "3",
        "--num-proc",
        "2",
    )
    assert result.returncode == 0, result.stderr
    assert "near duplicate" in result.stdout and "python" in result.stdout
    train = read_sources({"path": str(out), "split": "train"})
    validation = read_sources({"path": str(out), "split": "validation"})
    assert train.column_names == ["text", "language", "source", "path", "license"]
    texts = list(train["text"]) + list(validation["text"])
    _assert_one_version_each(texts, tree)
    assert len(validation)
    assert not set(train["path"]) & set(validation["path"])
    # through a mixture the built corpus keeps each file's source and path (what repository samples group by)
    mixture = mixture_from_dict(
        {"balance": "documents", "components": {"code": {"weight": 1.0, "sources": [str(out)]}}}
    )
    mixed = load_mixture(mixture, seed=0)
    rows = set(zip(mixed["source"], mixed["path"], strict=True))
    assert rows and rows <= set(zip(train["source"], train["path"], strict=True))
    summary = json.loads((out / "corpus_summary.json").read_text())
    assert summary["skipped"] == PLANTED_SKIPS
    assert summary["dedup"]["exact_removed"] == 1 and summary["dedup"]["near_removed"] == 2
    python = summary["languages"]["python"]
    assert python["documents"] == len(CLEAN)
    assert python["bytes"] == sum(len(t.encode()) for t in texts)
    assert 0 < python["tokens"] < python["bytes"]
    assert {p.stem for p in (out / "stats").glob("*.json")} == {
        "read",
        "near_buckets",
        "exact_buckets",
        "clusters",
        "write",
    }
    assert not (tmp_path / "corpus.partial").exists()  # the run folder goes once the output is published
    # An existing output is refused; the same seed gives the same documents in the same splits.
    with pytest.raises(FileExistsError, match="--overwrite"):
        build_corpus(BuildConfig(sources=[str(tree)], out=str(out)))
    second = build_corpus(
        BuildConfig(sources=[str(tree)], out=str(tmp_path / "again"), seed=3, validation_fraction=0.2, num_proc=1)
    )
    assert second.splits == summary["splits"]
    assert _corpus_rows(tmp_path / "again") == _corpus_rows(out)


@pytest.mark.slow
def test_slurm_dry_run_scripts_run_the_same_stages(tree, tmp_path):
    """The dry run writes datatrove's sbatch scripts and a submit.sh chaining them; running each script once per
    array index, as Slurm would, gives the same corpus as the local executor."""
    from codellama_hf.corpus.pipeline import STAGES

    out = tmp_path / "slurm"
    args = ("--seed", "3", "--validation-fraction", "0.2", "--num-proc", "2", "--num-perm", "32")  # 3 bands
    result = run_cli(
        "corpus",
        "build",
        str(tree),
        "--out",
        str(out),
        "--executor",
        "slurm",
        "--partition",
        "cpu",
        "--dry-run",
        *args,
    )
    assert result.returncode == 0, result.stderr
    submit = (tmp_path / "slurm.partial" / "submit.sh").read_text()
    assert submit in result.stdout and not out.exists()
    scripts = re.findall(r"--export=ALL,RUN_OFFSET=0 \$dep (\S+)\)\"$", submit, re.MULTILINE)
    assert [Path(s).parent.name for s in scripts] == list(STAGES) and submit.count(
        'dep="--dependency=afterok$ids"'
    ) == 6
    # No Slurm here: the job reads its node list with `scontrol show hostnames`; a one-line stand-in answers it.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/sh\necho localhost\n")
    (bin_dir / "scontrol").chmod(0o755)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SLURM_NODELIST": "localhost",
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
    }
    # submit.sh with a stand-in sbatch that logs its arguments: each stage waits for the previous stage's job
    (bin_dir / "sbatch").write_text(
        f'#!/bin/sh\necho "$@" >> {tmp_path}/sbatch.log\nwc -l < {tmp_path}/sbatch.log | tr -d " "\n'
    )
    (bin_dir / "sbatch").chmod(0o755)
    subprocess.run(["bash", str(tmp_path / "slurm.partial" / "submit.sh")], env=env, check=True, capture_output=True)
    calls = (tmp_path / "sbatch.log").read_text().splitlines()
    assert len(calls) == len(STAGES) and "--dependency" not in calls[0]
    assert all(f"--dependency=afterok:{i}" in call for i, call in enumerate(calls[1:], start=1))
    for script in scripts:
        body = Path(script).read_text()
        assert "#SBATCH --partition=cpu" in body and "launch_pickled_pipeline" in body
        tasks = int(re.search(r"#SBATCH --array=0-(\d+)", body).group(1)) + 1
        for index in range(tasks):
            done = subprocess.run(
                ["bash", script], env={**env, "SLURM_ARRAY_TASK_ID": str(index)}, capture_output=True, text=True
            )
            assert done.returncode == 0, done.stderr[-3000:]
    local = tmp_path / "local"
    assert run_cli("corpus", "build", str(tree), "--out", str(local), *args).returncode == 0
    assert _corpus_rows(out) == _corpus_rows(local)
    assert (
        json.loads((out / "corpus_summary.json").read_text())["dedup"]
        == json.loads((local / "corpus_summary.json").read_text())["dedup"]
    )


@pytest.mark.slow
def test_interrupted_build_resumes_from_completed_tasks(tmp_path):
    """SIGKILL mid-build leaves no output; a changed setting is refused; the same command resumes, skipping the
    tasks datatrove marked complete, and gives the corpus an uninterrupted build gives."""
    import signal
    import sys

    src = tmp_path / "src"
    for package in ("email", "json", "xml", "unittest", "asyncio", "importlib", "logging", "concurrent"):
        shutil.copytree(STDLIB / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "out"
    args = ["corpus", "build", str(src), "--out", str(out), "--num-proc", "4", "--workers", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    completions = tmp_path / "out.partial" / "logs" / "read" / "completions"
    with open(tmp_path / "log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "codellama_hf", *args], env=env, stdout=log, stderr=log, start_new_session=True
        )
        deadline = time.time() + 120
        while (
            time.time() < deadline
            and proc.poll() is None
            and not (completions.is_dir() and any(completions.iterdir()))
        ):
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and not out.exists()
    finished = len(list(completions.iterdir()))
    assert finished >= 1
    changed = run_cli(*args[:-4], "--num-proc", "4", "--workers", "1", "--seed", "5")
    assert changed.returncode == 2 and "seed" in changed.stderr and "delete" in changed.stderr
    resumed = run_cli(*args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Skipping {finished} already completed tasks" in resumed.stderr or finished == 4
    again = run_cli(*args[:3], "--out", str(tmp_path / "again"), *args[5:])
    assert again.returncode == 0 and _corpus_rows(out) == _corpus_rows(tmp_path / "again")
    assert not (tmp_path / "out.partial").exists()


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["code", "python"])
def test_table1_presets_realise_token_shares(preset, llama2_dir):
    """Table 1's shares are of tokens: counted again here with Llama 2's tokenizer on the first 1,500 documents
    of the embedded-corpus mixture, every component is within 1 point of its share (and over the whole mixture)."""
    from transformers import AutoTokenizer

    from codellama_hf.corpus.token_balance import token_shares

    mixed = load_mixture(preset, seed=1)
    assert PRESETS[preset].balance == "tokens" and mixed.column_names == [
        "text",
        "source",
        "path",
        "component",
        "tokens",
    ]
    head = mixed.select(range(1500))
    tokenizer = AutoTokenizer.from_pretrained(str(llama2_dir))
    counts = [len(ids) for ids in tokenizer(list(head["text"]), add_special_tokens=False)["input_ids"]]
    assert counts == list(head["tokens"])
    totals = Counter()
    for component, n in zip(head["component"], counts, strict=True):
        totals[component] += n
    for name, weight in PRESETS[preset].weights.items():
        assert abs(totals[name] / sum(totals.values()) - weight) < 0.01, (name, totals[name] / sum(totals.values()))
        assert abs(token_shares(mixed)[name] - weight) < 0.01
    documents = Counter(head["component"])
    assert documents["nl_code"] / len(head) > 0.2  # short docstrings: drawn far more often than their 8-10%
