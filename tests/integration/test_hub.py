"""Publishing and loading through real processes: the `push` CLI against the loopback Hub (tests/helpers/hub.py),
and `load()` by Hub id from an HF cache with HF_HUB_OFFLINE=1."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.helpers import ROOT
from tests.helpers.hub import TOKEN


def cli(args: list[str], env: dict):
    """`python -m codellama_hf ARGS` with this environment and no token but what `env` provides."""
    base = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HOME")}
    return subprocess.run(
        [sys.executable, "-m", "codellama_hf", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**base, "PYTHONPATH": str(ROOT), **env},
        timeout=600,
    )


def test_dry_run_stages_exactly_what_push_uploads(family, results, hub, tmp_path):
    """The real CLI in a subprocess: token from the login store, dry run first, then the push itself."""
    home = tmp_path / "hf_home"
    home.mkdir()
    (home / "token").write_text(TOKEN)  # the login store `hf auth login` writes
    env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(home), "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1"}
    stage = tmp_path / "staging"
    args = [
        "push",
        "--model",
        f"tiny={family['tiny']}",
        "--results",
        f"tiny={results}",
        "--model",
        f"tiny-python={family['tiny-python']}",
        "--stage-dir",
        str(stage),
    ]
    dry = cli([*args, "--dry-run"], env)
    assert dry.returncode == 0, dry.stderr
    assert hub.writes() == [] and hub.repos == {}
    plan = json.loads((stage / "push-plan.json").read_text())
    planned = {repo: sorted(r["upload"]) for repo, r in plan["repos"].items()}
    for repo, files in planned.items():
        folder = stage / repo.split("/")[1]
        assert files == sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())

    push = cli(args, env)
    assert push.returncode == 0, push.stderr
    assert {repo: sorted(hub.files(repo)) for repo in planned} == planned
    for output in (dry.stdout, dry.stderr, push.stdout, push.stderr):
        assert TOKEN not in output
    assert not any(TOKEN.encode() in p.read_bytes() for p in stage.rglob("*") if p.is_file())

    # Staged repositories load with plain transformers.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = stage / "CodeLlama-tiny-hf"
    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    assert json.loads((folder / "config.json").read_text())["rope_theta"] == 10_000.0


def test_load_from_the_hf_cache_offline(online, family, tmp_path):
    """Push one model, download it into an empty HF cache, then load it by Hub id with HF_HUB_OFFLINE=1."""
    from huggingface_hub import snapshot_download

    from codellama_hf.load import HUB_PATTERNS
    from codellama_hf.publish.hub import push_family
    from codellama_hf.publish.staging import Member, PushConfig

    hub = online
    push_family(
        PushConfig(
            models=[Member("tiny", family["tiny"])], stage_dir=tmp_path / "s", endpoint=hub.url, collection=None
        )
    )
    cache = tmp_path / "hf_cache"
    snapshot_download("tester/CodeLlama-tiny-hf", cache_dir=cache, endpoint=hub.url, allow_patterns=HUB_PATTERNS)
    script = (
        "import json, sys\n"
        "from codellama_hf import load\n"
        "m = load('tester/CodeLlama-tiny-hf')\n"
        "out = {'repr': repr(m), 'infill': m.can_infill, 'completion': m.generate('def f(x):', max_new_tokens=3)}\n"
        "for name, kwargs in (('missing', {}), ('revision', {'revision': 'v9'})):\n"
        "    try:\n"
        "        load('tester/Other-hf' if name == 'missing' else 'tester/CodeLlama-tiny-hf', **kwargs)\n"
        "    except FileNotFoundError as err:\n"
        "        out[name] = str(err)\n"
        "print(json.dumps(out))\n"
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(cache),
        "HF_ENDPOINT": "http://127.0.0.1:9",
        "PYTHONPATH": str(ROOT),
    }
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["repr"].startswith("CodeLlama(source='tester/CodeLlama-tiny-hf', variant=CodeLlama-tiny")
    assert out["infill"] is True and isinstance(out["completion"], str)
    assert "tester/Other-hf is not in the HF cache" in out["missing"] and "HF_HUB_OFFLINE=1" in out["missing"]
    assert "revision 'v9' of tester/CodeLlama-tiny-hf is not in the HF cache" in out["revision"]
    assert "cached: main" in out["revision"]
