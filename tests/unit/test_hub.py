"""Publishing a family (codellama_hf.publish) through the real huggingface_hub client, against a loopback Hub.

`LoopbackHub` (tests/helpers/hub.py) is an HTTP server on 127.0.0.1 written for these tests. It speaks the
endpoints the client calls (whoami, repos/create, tree, preupload, the Git LFS batch API with basic transfers, NDJSON
commits, collections, model info, resolve for downloads), stores what it receives, checks hashes and the bearer
token, and logs every request. The client runs unmodified; HF_HUB_DISABLE_XET=1 makes it upload large files by Git
LFS instead of Xet (whose content-addressed store is not reproduced here). The tests through real processes (the
CLI, an offline load) are in tests/integration/test_hub.py.
"""

from __future__ import annotations

import json

import pytest

from tests.helpers.hub import TOKEN


def _config(family, results, hub, tmp_path, **overrides):
    from codellama_hf.publish.staging import Member, PushConfig

    members = [
        Member("tiny", family["tiny"], [results]),
        Member("tiny-python", family["tiny-python"]),
        Member("tiny-instruct", family["tiny-instruct"]),
    ]
    return PushConfig(models=members, stage_dir=tmp_path / "staging", endpoint=hub.url, **overrides)


def test_push_family_then_rerun_uploads_nothing(online, family, results, tmp_path):
    from huggingface_hub import HfApi, ModelCard

    from codellama_hf.evaluation.report import new_result, write_result
    from codellama_hf.publish.hub import push_family

    hub = online
    report = push_family(_config(family, results, hub, tmp_path))
    repos = ["tester/CodeLlama-tiny-hf", "tester/CodeLlama-tiny-Python-hf", "tester/CodeLlama-tiny-Instruct-hf"]
    assert sorted(report["repos"]) == sorted(repos)
    staged = tmp_path / "staging"
    for repo_id in repos:
        folder = staged / repo_id.split("/")[1]
        local = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        assert hub.files(repo_id) == local  # every staged file arrived, byte for byte
        assert {"config.json", "model.safetensors", "tokenizer.json", "lineage.json", "README.md"} <= set(local)
    assert "evaluation/humaneval.json" in hub.files(repos[0])
    lfs_files = {
        p for p, f in hub.repos[repos[0]]["commits"][hub.repos[repos[0]]["branches"]["main"]].items() if f["lfs"]
    }
    assert "model.safetensors" in lfs_files  # large files went through the Git LFS batch API
    card = ModelCard(hub.files(repos[1])["README.md"].decode())
    assert card.data.base_model == repos[0]  # the Python model names its published parent
    [collection] = hub.collections.values()
    assert [i["id"] for i in collection["items"]] == repos and collection["title"] == "Code Llama (codellama_hf)"
    assert hub.authorization == {f"Bearer {TOKEN}"}

    # The same push again: only reads.
    before = len(hub.log)
    again = push_family(_config(family, results, hub, tmp_path))
    assert hub.writes(before) == []
    assert all(r["upload"] == [] and r["commit"] is None for r in again["repos"].values())
    assert again["collection"]["add"] == [] and not again["collection"]["create"]

    # A new HumanEval result changes one card and one results file: exactly those go up.
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / "perplexity.json").write_bytes((results / "perplexity.json").read_bytes())
    humaneval = json.loads((results / "humaneval.json").read_text())
    write_result(
        newer,
        new_result(
            "humaneval",
            humaneval["model"],
            metrics={"pass@1": 0.5},
            config=humaneval["config"],
            num_problems=164,
            total_problems=164,
            num_samples=164,
        ),
    )
    before = len(hub.log)
    changed = push_family(_config(family, newer, hub, tmp_path))
    assert changed["repos"][repos[0]]["upload"] == ["README.md", "evaluation/humaneval.json"]
    assert changed["repos"][repos[0]]["commit"] == hub.repos[repos[0]]["branches"]["main"]
    assert all(changed["repos"][r]["upload"] == [] for r in repos[1:])
    commits = [w[1] for w in hub.writes(before) if w[1].endswith("/commit/main")]
    assert commits == [f"/api/models/{repos[0]}/commit/main"]
    assert json.loads(hub.files(repos[0])["evaluation/humaneval.json"])["metrics"]["pass@1"] == 0.5

    # A file the staged repository no longer has (e.g. a shard of an earlier upload) goes with delete_stale only.
    HfApi(endpoint=hub.url, token=TOKEN).upload_file(
        path_or_fileobj=b"old", path_in_repo="model-00002.safetensors", repo_id=repos[2]
    )
    kept = push_family(_config(family, newer, hub, tmp_path))
    assert kept["repos"][repos[2]]["delete"] == [] and "model-00002.safetensors" in hub.files(repos[2])
    cleaned = push_family(_config(family, newer, hub, tmp_path, delete_stale=True))
    assert cleaned["repos"][repos[2]]["delete"] == ["model-00002.safetensors"]
    assert "model-00002.safetensors" not in hub.files(repos[2]) and "README.md" in hub.files(repos[2])


def test_push_without_token_is_a_clear_error(family, hub, tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    from codellama_hf.cli import main

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no_login" / "token"))  # empty login store
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    code = main(["push", "--model", f"tiny={family['tiny']}", "--stage-dir", str(tmp_path / "s")])
    assert code == 2
    assert "no Hugging Face token: set HF_TOKEN or run `hf auth login`" in capsys.readouterr().err
    assert hub.log == []


def test_wrong_token_and_push_config_errors(online, family, results, tmp_path, monkeypatch):
    from codellama_hf.publish.hub import push_family
    from codellama_hf.publish.staging import Member, PushConfig, read_push_config

    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(RuntimeError, match=r"HTTP 401.*check HF_TOKEN or run `hf auth login`"):
        push_family(_config(family, results, online, tmp_path))
    with pytest.raises(ValueError, match=r"family slot\(s\) \['tiny'\] given twice"):
        PushConfig(models=[Member("tiny", family["tiny"]), Member("TINY", family["tiny-python"])])
    with pytest.raises(ValueError, match="unknown Code Llama variant 'java'"):
        Member("7b-java", family["tiny"])
    config = tmp_path / "family.yaml"
    config.write_text(f"namespace: me\nmodels:\n  tiny: {family['tiny']}\ncolection: typo\n")
    with pytest.raises(ValueError, match=r"family.yaml: unknown key\(s\) \['colection'\]"):
        read_push_config(config)
    config.write_text(f"namespace: me\nmodels:\n  tiny: {{path: {family['tiny']}, results: [{tmp_path / 'nope'}]}}\n")
    with pytest.raises(FileNotFoundError, match="results folder .*nope not found"):
        read_push_config(config)


def test_online_errors_name_the_revision_and_the_repo(online, family, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from codellama_hf.load import load
    from codellama_hf.publish.hub import push_family
    from codellama_hf.publish.staging import Member, PushConfig

    hub = online
    push_family(
        PushConfig(
            models=[Member("tiny", family["tiny"])], stage_dir=tmp_path / "s", endpoint=hub.url, collection=None
        )
    )
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match=r"tester/CodeLlama-tiny-hf has no revision 'nope'"):
        load("tester/CodeLlama-tiny-hf", revision="nope")
    with pytest.raises(FileNotFoundError, match=r"tester/Missing-hf: no such model"):
        load("tester/Missing-hf")
