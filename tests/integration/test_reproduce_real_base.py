"""`codellama-hf reproduce --preset smollm2-smoke`: the real-base miniature (SmolLM2-135M, the registry asset)
end to end in a real subprocess, one step per stage, so the numbers are plumbing checks. What is tested: the FIM
code model has the four BPE FIM tokens (49,156 rows) and the no-FIM twin keeps 49,152, the Python stage continues
the no-FIM twin, LCFT raised theta, instruct continues LCFT, every measurement ran through generation and the
sandbox, and the report carries Wilson intervals, verdicts and the wall time and load."""

import json

import pytest

from tests.helpers import run_cli

# Five training subprocesses each load the 135M model and start a data stream (~1-2 min each on 2 shared cores),
# and twelve measurements each load it again: minutes, not seconds, hence the longer timeout.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


def test_smollm2_smoke_pipeline_end_to_end(tmp_path, smollm2_path):
    out = tmp_path / "run"
    first = run_cli("reproduce", "--preset", "smollm2-smoke", "--out", str(out), timeout=1200)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    rows = {
        m: json.loads((out / "models" / m / "config.json").read_text())["vocab_size"]
        for m in ("code", "code-nofim", "python", "lcft", "instruct")
    }
    assert rows == {"code": 49156, "code-nofim": 49152, "python": 49152, "lcft": 49156, "instruct": 49156}
    lineage = {m: json.loads((out / "models" / m / "lineage.json").read_text()) for m in rows}
    assert lineage["code"]["base_model"]["name_or_path"] == str(smollm2_path)
    assert lineage["code"]["data"]["fim"] and not lineage["code-nofim"]["data"]["fim"]
    assert lineage["python"]["base_model"]["name_or_path"] == str(out / "models" / "code-nofim")
    assert lineage["lcft"]["rope_theta"] == 1e6
    assert lineage["instruct"]["base_model"]["name_or_path"] == str(out / "models" / "lcft")
    tokens = json.loads((out / "tokenizer-fim" / "tokenizer.json").read_text())["added_tokens"]
    assert {t["content"]: t["id"] for t in tokens if t["id"] >= 49152} == {
        "<PRE>": 49152,
        "<SUF>": 49153,
        "<MID>": 49154,
        "<EOT>": 49155,
    }

    claims = json.loads((out / "report" / "claims.json").read_text())
    em = claims["fim_gives_infilling"]["exact_match"]
    for fmt in ("psm", "spm"):
        for arm in ("fim", "no_fim"):
            r = em[fmt][arm]
            assert r["n"] == 1 and 0.0 <= r["low"] <= r["rate"] <= r["high"] <= 1.0
        # the graded measure, paired over the same task: the untrained FIM rows make the no-FIM model's loss high
        middle = claims["fim_gives_infilling"]["middle_loss"][fmt]
        assert middle["problems"] == 1 and middle["paired"] and middle["before"] > 0 and middle["after"] > 0
    runs = claims["humaneval"]["runs"]
    assert {name: r["style"] for name, r in runs.items()} == {
        "base_completion": "completion",
        "base_chat": "chat",
        "code_completion": "completion",
        "instruct_chat": "chat",
    }
    assert all(r["n"] == 1 for r in runs.values())
    for key in ("fim_gives_infilling", "fim_costs_little_left_to_right", "lcft_lowers_long_context_perplexity"):
        assert isinstance(claims[key]["held"], bool)
    report = (out / "report" / "report.md").read_text()
    assert "Wall time" in report and "load average" in report and "[" in report and "Middle loss" in report
    runs_log = json.loads((out / "report" / "runs.json").read_text())
    assert len(runs_log) == 1 and runs_log[0]["load_1min"] and runs_log[0]["seconds"] > 0

    # a rerun skips every finished step and re-renders the same claims
    again = run_cli("reproduce", "--preset", "smollm2-smoke", "--out", str(out), timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((out / "report" / "claims.json").read_text()) == claims
    assert "skip code-nofim" in again.stdout.replace("\n", " ")
