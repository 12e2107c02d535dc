"""`codellama-hf reproduce --preset smoke`: the whole miniature pipeline end to end in a real subprocess, then rerun.

The smoke preset trains every stage for two steps, so its numbers are plumbing checks; what is tested is that every
step runs and leaves its output (Meta checkpoint, extended vocabulary, FIM counts, self-instruct filtering, cards,
staged family, report with claims and PNGs), that a rerun skips finished steps, that a stage whose final save is
missing resumes from its checkpoint, and that re-measuring the same models gives the same claims.json.
"""

import json

import pytest

from tests.helpers import run_cli

pytestmark = pytest.mark.slow

PNG = b"\x89PNG\r\n\x1a\n"
STEPS = (
    "tokenizer",
    "pretrain",
    "meta",
    "init",
    "data",
    "code",
    "code-nofim",
    "code-python-branch",
    "python",
    "lcft",
    "selfinstruct",
    "instruct",
    "hub",
)


def test_smoke_pipeline_end_to_end_then_rerun(tmp_path):
    out = tmp_path / "run"
    first = run_cli("reproduce", "--preset", "smoke", "--out", str(out), "--seed", "3", timeout=1200)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    # "Llama 2" in Meta's format, converted back with Code Llama's 16 extra pieces
    params = json.loads((out / "meta" / "params.json").read_text())
    assert params["vocab_size"] == 4000 and (out / "meta" / "consolidated.00.pth").is_file()
    assert json.loads((out / "models" / "init" / "config.json").read_text())["vocab_size"] == 4016
    # the stages chain as in the paper; the code stage trained with FIM, the instruct stage on its code rehearsal only
    lineage = {
        m: json.loads((out / "models" / m / "lineage.json").read_text())
        for m in ("pretrain", "code", "code-nofim", "code-python-branch", "python", "lcft", "instruct")
    }
    assert lineage["pretrain"]["stage"] == "pretrain" and lineage["pretrain"]["vocab_size"] == 4000
    assert lineage["code"]["base_model"]["name_or_path"] == str(out / "models" / "init")
    assert lineage["code"]["data"]["fim"] and not lineage["code-nofim"]["data"]["fim"]
    # the Python branch: code without FIM on the 4,000-piece vocabulary, then Python (no infilling pieces)
    branch = lineage["code-python-branch"]
    assert branch["base_model"]["name_or_path"] == str(out / "models" / "pretrain") and not branch["data"]["fim"]
    assert lineage["python"]["base_model"]["name_or_path"] == str(out / "models" / "code-python-branch")
    assert json.loads((out / "models" / "python" / "config.json").read_text())["vocab_size"] == 4000
    assert lineage["lcft"]["rope_theta"] == 1e6
    assert lineage["instruct"]["base_model"]["name_or_path"] == str(out / "models" / "lcft")
    assert lineage["instruct"]["data"]["fim"] == {"rate": 0.9, "spm_rate": 0.5, "seed": 3, "components": ["code"]}
    # self-instruct ran the toy generator's candidates through the sandbox and kept the passing ones
    summary = json.loads((out / "selfinstruct" / "summary.json").read_text())
    assert summary["questions_kept"] == 3 and summary["solutions"]["wrong_answer"] == 3

    claims = json.loads((out / "report" / "claims.json").read_text())
    for key in (
        "1_fim_costs_little_left_to_right",
        "2_fim_gives_infilling",
        "3_lcft_lowers_long_context_perplexity",
        "4_python_stage_lowers_python_loss",
        "7_instruct_keeps_infilling",
    ):
        assert isinstance(claims[key]["held"], bool)
    # infilling before (LCFT) and after (instruct) the instruct stage, on the same examples, paired
    instruct_infilling = claims["7_instruct_keeps_infilling"]
    assert instruct_infilling["exact_match"]["psm"]["paired"] and instruct_infilling["examples"] == 4
    assert instruct_infilling["instruct_fim"]["components"] == ["code"]
    assert set(claims["3_lcft_lowers_long_context_perplexity"]["perplexity_lcft"]) == {"64", "128", "256"}
    assert set(claims["5_loss_curves"]) == {
        "pretrain",
        "code",
        "code-nofim",
        "code-python-branch",
        "python",
        "lcft",
        "instruct",
    }
    # evaluation curves during each stage: every stage evaluated at its end (the smoke preset's one point);
    # infilling on the synthetic held-out repositories wherever the tokenizer has the pieces, nothing failed
    curves = claims["6_quick_eval_curves"]
    assert set(curves) == set(claims["5_loss_curves"])
    assert all(c["steps"] == [2] and not sum(c["failures"].values()) for c in curves.values())
    for name, curve in curves.items():
        infills = "infill_middle_loss_with_context" in curve["metrics"]
        assert infills == (name not in ("pretrain", "code-python-branch", "python")), name
        assert "perplexity@64" in curve["metrics"]
    report = (out / "report" / "report.md").read_text()
    assert "codellama-hf reproduce --preset smoke" in report and "## Claim 4" in report and "## Claim 7" in report
    assert "## Evaluation curves during each stage" in report
    for png in ("loss_curves.png", "perplexity_by_length.png", "claims.png", "quick_eval_curves.png"):
        assert (out / "report" / png).read_bytes()[:8] == PNG
    family = json.loads((out / "hub" / "family.json").read_text())
    assert family["dry_run"] and len(family["repos"]) == 3
    for repo in family["repos"].values():
        assert {"README.md", "config.json", "model.safetensors", "lineage.json"} <= set(repo["upload"])
    assert "Code Llama - Python (tiny)" in (out / "hub" / "CodeLlama-tiny-Python-hf" / "README.md").read_text()

    # Rerun: finished steps are skipped; a stage without its final save resumes from its checkpoint; the same
    # models measured again give the same numbers.
    weights = out / "models" / "code" / "model.safetensors"
    written = weights.stat().st_mtime_ns
    (out / "models" / "instruct" / "lineage.json").unlink()
    for name in ("ppl_lcft", "infill_fim", "loss_python_python"):
        (out / "eval" / f"{name}.json").unlink()
    (out / "report" / "claims.json").rename(tmp_path / "claims-first.json")
    again = run_cli("reproduce", "--preset", "smoke", "--out", str(out), "--seed", "3", timeout=1200)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    for step in STEPS:
        if step != "instruct":
            assert f"skip {step}:" in again.stdout
    assert "resuming from" in again.stdout and (out / "models" / "instruct" / "lineage.json").is_file()
    assert weights.stat().st_mtime_ns == written
    assert json.loads((out / "report" / "claims.json").read_text()) == json.loads(
        (tmp_path / "claims-first.json").read_text()
    )

    other = run_cli("reproduce", "--preset", "smoke", "--out", str(out), "--seed", "4")
    assert other.returncode == 2 and "other settings" in other.stderr
