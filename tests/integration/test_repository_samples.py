"""Repository-level samples (data/repository.py) with Code Llama's real tokenizer: whole files, exact headers, FIM
inside the last file, deterministic decisions, bad input counted."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_code_stage_with_repository_samples(tmp_path):
    import json

    from codellama_hf.training import run_stage

    corpus = tmp_path / "repos"
    for name in ("alpha", "beta"):
        root = corpus / name / "pkg"
        root.mkdir(parents=True)
        (root / "__init__.py").write_text("")
        (root / "util.py").write_text("def double(x):\n    return 2 * x\n" * 3)
        (root / "core.py").write_text("from pkg import util\n\n\ndef run(x):\n    return util.double(x)\n" * 4)
    out = tmp_path / "out"
    argv = [
        "--output_dir",
        str(out),
        "--dataset_mixture",
        "none",
        "--dataset_sources",
        str(corpus),
        "--repository_samples",
        "true",
        "--repository_key_depth",
        "1",
        "--seq_len",
        "128",
        "--tokens_per_step",
        "256",
        "--max_steps",
        "2",
        "--save_steps",
        "2",
        "--logging_steps",
        "1",
        "--packing_buffer",
        "2",
        "--data_streams_per_process",
        "1",
        "--dataloader_num_workers",
        "0",
        "--report_to",
        "none",
    ]
    folder = run_stage("code", argv=argv)
    lineage = json.loads((folder / "lineage.json").read_text())
    assert lineage["data"]["repository_samples"] == {"repositories": 2, "key_depth": 1}
    assert lineage["steps"] == 2
