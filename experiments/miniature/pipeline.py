"""The miniature's run folder and steps: tokenizer, "Llama 2", conversions, corpus blocks, stages, self-instruct,
measurements, cards and the staged family, each skipped when its output is complete."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from codellama_hf.io import changed_settings, write_json, write_jsonl, write_text

from .measure import evaluate
from .presets import PRESETS, PRETRAIN, PYTHON_BRANCH
from .report import write_report
from .run import Run, console

HERE = Path(__file__).resolve().parent
RECIPES = HERE.parents[1] / "recipes" / "configs" / "tiny"
# Interview problems in the paper's test format with candidate solutions, the first of each deliberately wrong (one
# never ends: a timeout): what a weak code model would produce, so execution filtering has something to filter.
TOY_PROBLEMS = json.loads((HERE / "toy_problems.json").read_text(encoding="utf-8"))


def train(run: Run, stage: str, output: Path, overrides: list[str]) -> None:
    """One stage in a subprocess in the run folder, resuming from the latest checkpoint in `output` if an earlier
    run was cut; with the preset's quick evaluations during the stage."""
    quick = run.preset.quick_eval
    argv = [
        *run.preset.stages[stage].argv(),
        *(quick.argv(run.preset.stages[stage].max_steps, crossfile_repositories(run)) if quick else []),
        "--output_dir",
        str(output),
        "--seed",
        str(run.seed),
        "--overwrite_output_dir",
        "false",
        "--resume_from_checkpoint",
        "latest",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        *overrides,
    ]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "WORLD_SIZE": "1"}
    console.print(f"[dim]{stage}: {' '.join(argv)}[/dim]")
    result = subprocess.run([sys.executable, str(HERE / "stage.py"), stage, *argv], check=False, env=env, cwd=run.out)
    if result.returncode:
        raise RuntimeError(
            f"the {stage} stage failed (exit {result.returncode}) in {output}; rerun the same command "
            "to resume from its latest checkpoint"
        )


def crossfile_repositories(run: Run) -> list[Path]:
    """The held-out synthetic repositories of the quick infilling evaluations (none: the standard library's)."""
    folder = run.path("data", "crossfile")
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def code_pieces(run: Run) -> None:
    """The embedded code corpus' training files cut into blocks of at most a quarter of the code stage's context.

    FIM transforms only documents that fit one context (paper: whole files in 4,096 tokens); at a 256-token
    context almost no file fits, so the miniature trains on top-level blocks (split at blank lines, merged up to
    2 characters per token of the context) instead of whole files. Validation files stay whole and unseen.
    The stage's mixture is Table 1's code preset with these blocks as its code component, balanced by bytes (Table
    1 gives token shares; the prose documents are whole files, so balancing documents would make them most tokens).
    """
    import yaml

    from codellama_hf.corpus import embedded_corpus

    limit = 2 * run.preset.stages["code"].seq_len
    rows = []
    for doc in embedded_corpus("code", "train", max_documents=run.preset.code_files):
        pieces, current = [], ""
        for block in doc["text"].split("\n\n"):
            while len(block) > limit:  # a long block is cut at a line break
                cut = block.rfind("\n", 0, limit)
                cut = cut if cut > 0 else limit
                pieces.append(block[:cut])
                block = block[cut:].lstrip("\n")
            if current and len(current) + 2 + len(block) > limit:
                pieces.append(current)
                current = ""
            current = f"{current}\n\n{block}" if current else block
        pieces.append(current)
        rows += [
            {"text": piece, "language": doc["language"], "path": f"{doc['path']}#{i}"}
            for i, piece in enumerate(pieces)
            if piece.strip()
        ]
    path = write_jsonl(run.path("data", "code-pieces.jsonl"), rows)
    # relative to the run folder (the stages' working directory): the held-out rule hashes the source's name, so
    # an absolute path would give every --out folder a different split, and different numbers
    source = path.relative_to(run.out).as_posix()
    mixture = {
        "balance": "bytes",
        "components": {"code": {"weight": 0.85, "sources": [source]}, "nl_code": 0.08, "nl": 0.07},
    }
    mixture_path = run.path("data", "code-mixture.yaml")
    write_text(mixture_path, yaml.safe_dump(mixture))  # last: its presence marks the step complete
    console.print(f"{len(rows):,} code blocks of at most {limit:,} characters -> {path}, mixture {mixture_path}")


class ToyGenerator:
    """A stand-in for Code Llama 7B writing tests and solutions: answers Figs. 11-12's prompts from TOY_PROBLEMS.

    Tests come back in the [TESTS] format with the "#Test case n:" comments; the n solutions cycle through the
    problem's candidates (wrong first), in the [PYTHON] format, so parsing, sandboxing and keeping the first
    passing solution all run for real on generated text.
    """

    name = "toy-reference-bank"

    def __init__(self):
        self.by_question = {p["question"]: (p["tests"], p["solutions"]) for p in TOY_PROBLEMS}

    def complete(self, prompts, *, n, sampling, seed):
        import re

        answers = []
        for prompt in prompts:
            question = re.findall(r"Problem: (.*)", prompt.text)[-1]
            tests, solutions = self.by_question[question]
            if "[PYTHON]" in prompt.text and "Test:" in prompt.text.rsplit("Problem:", 1)[-1]:
                answers.append([f"[PYTHON]\n{solutions[i % len(solutions)]}\n" for i in range(n)])
            else:
                block = "".join(f"# Test case {i}:\nassert {t}\n" for i, t in enumerate(tests, 1))
                answers.append([f"[TESTS]\n{block}"] * n)
        return answers


def self_instruct(run: Run) -> None:
    from codellama_hf.selfinstruct import SelfInstructConfig, generate_self_instruct

    out = run.path("selfinstruct")
    out.mkdir(parents=True, exist_ok=True)
    questions = out / "questions.txt"
    questions.write_text("".join(p["question"] + "\n" for p in TOY_PROBLEMS[: run.preset.instruct_problems]))
    config = SelfInstructConfig(
        out_dir=out, questions_file=questions, solutions=2, timeout=2.0, workers=2, seed=run.seed
    )
    summary = generate_self_instruct(config, ToyGenerator(), allow_code_execution=True)
    console.print(
        f"self-instruct: {summary['questions_kept']} of {summary['questions']} questions kept; "
        f"solutions {summary['solutions']}"
    )


NAMESPACE = "codellama-hf-miniature"


def stage_family(run: Run) -> None:
    """The family staged for the Hub (cards, repositories); compared with a Hub only with --hub-endpoint."""
    from codellama_hf.publish.hub import push_family, stage_family
    from codellama_hf.publish.staging import Member, PushConfig

    stage_dir = run.path("hub")
    members = [
        Member("tiny", run.model("lcft"), [run.path("eval", "results", "lcft")]),
        Member("tiny-python", run.model("python"), [run.path("eval", "results", "python")]),
        Member("tiny-instruct", run.model("instruct")),
    ]
    config = PushConfig(
        models=members, namespace=NAMESPACE, stage_dir=stage_dir, dry_run=True, endpoint=run.hub_endpoint
    )
    report, compared = None, False
    if run.hub_endpoint:
        try:
            report, compared = push_family(config, token=None), True
        except RuntimeError as err:  # the Hub could not be reached: staging is complete, the comparison is not
            console.print(f"[yellow]{err}; every staged file counts as new[/yellow]")
    if report is None:
        report = {"dry_run": True, "repos": {}}
        staged = stage_family(config, NAMESPACE)
        for member in members:
            repo = f"{NAMESPACE}/{config.repo_name(member.variant)}"
            folder = staged[repo]
            files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
            report["repos"][repo] = {"slot": member.slot, "folder": str(folder), "exists": False, "upload": files}
    report["compared_with_hub"] = compared
    write_json(stage_dir / "family.json", report)


def reproduce(out: str | os.PathLike, *, preset: str = "tiny", seed: int = 0, hub_endpoint: str | None = None) -> Path:
    """Run (or continue) the miniature pipeline into `out`; returns the report's path."""
    if preset not in PRESETS:
        raise ValueError(f"--preset {preset}: choose one of {', '.join(PRESETS)}")
    run = Run(Path(out).resolve(), preset, seed, hub_endpoint)
    run.out.mkdir(parents=True, exist_ok=True)
    settings = {"preset": preset, "seed": seed, "stages": {k: asdict(v) for k, v in run.preset.stages.items()}}
    saved = run.path("settings.json")
    changed = changed_settings(json.loads(saved.read_text()), settings) if saved.is_file() else ""
    if changed:
        raise ValueError(
            f"{run.out} holds a run with other settings ({changed}); use another --out or the same --preset and --seed"
        )
    write_json(saved, settings)
    if run.preset.base != "tiny":  # a real pretrained base instead of the tiny "Llama 2" (real_base.py)
        from .real_base import reproduce_real

        return reproduce_real(run)
    started = time.monotonic()
    from codellama_hf.convert import hf_to_meta, meta_to_hf
    from codellama_hf.tokenizer import build_tiny_tokenizer

    quick = run.preset.quick_eval
    if quick and quick.repositories:
        from codellama_hf.evaluation.synthetic_repositories import write_repositories

        crossfile = run.path("data", "crossfile")
        run.step("crossfile", crossfile, lambda: write_repositories(crossfile, seed, "miniature", quick.repositories))
    tokenizer = run.path("tokenizer-llama2")
    run.step("tokenizer", tokenizer / "tokenizer.json", lambda: build_tiny_tokenizer(tokenizer, infilling=False))
    pretrain = run.model(PRETRAIN)
    nl_mixture = str(RECIPES / "nl_mixture.yaml")
    run.step(
        "pretrain",
        pretrain / "lineage.json",
        lambda: train(
            run, PRETRAIN, pretrain, ["--tokenizer_name_or_path", str(tokenizer), "--dataset_mixture", nl_mixture]
        ),
    )
    meta = run.path("meta")
    run.step(
        "meta",
        meta / "params.json",
        lambda: hf_to_meta(pretrain, meta, shards=1, progress=False, tokenizer_model=tokenizer / "tokenizer.model"),
    )
    init = run.model("init")
    run.step(
        "init",
        init / "config.json",
        lambda: meta_to_hf(meta, init, extend_vocab=True, dtype="float32", progress=False),
    )
    mixture = run.path("data", "code-mixture.yaml")
    run.step("data", mixture, lambda: code_pieces(run))
    start = ["--model_name_or_path", str(init), "--dataset_mixture", str(mixture)]
    for name, fim in (("code", "0.9"), ("code-nofim", "0.0")):
        folder = run.model(name)
        run.step(
            name, folder / "lineage.json", lambda f=folder, r=fim: train(run, "code", f, [*start, "--fim_rate", r])
        )
    # The paper's Python branch (Figure 2): a code stage without FIM on the "Llama 2" vocabulary (4,000 rows, no
    # infilling pieces), then Python; the python stage refuses a start that has them (family.check_python_start).
    branch = run.model(PYTHON_BRANCH)
    branch_start = ["--model_name_or_path", str(pretrain), "--dataset_mixture", str(mixture), "--fim_rate", "0.0"]
    run.step(PYTHON_BRANCH, branch / "lineage.json", lambda: train(run, "code", branch, branch_start))
    for name, start in (("python", PYTHON_BRANCH), ("lcft", "code")):
        folder = run.model(name)
        run.step(
            name,
            folder / "lineage.json",
            lambda f=folder, n=name, s=start: train(run, n, f, ["--model_name_or_path", str(run.model(s))]),
        )
    run.step("selfinstruct", run.path("selfinstruct", "summary.json"), lambda: self_instruct(run))
    instruct = run.model("instruct")
    # relative to the run folder, like the code data; the code rehearsal is the code stage's blocks, which fit the
    # context, so FIM (instruct_fim_rate in the tiny recipe) applies to them as it would to whole files at 4,096
    code = run.path("data", "code-pieces.jsonl").relative_to(run.out).as_posix()
    sources = json.dumps({"instruct": ["selfinstruct/dataset"], "code": [code]})
    run.step(
        "instruct",
        instruct / "lineage.json",
        lambda: train(
            run, "instruct", instruct, ["--model_name_or_path", str(run.model("lcft")), "--mixture_sources", sources]
        ),
    )
    evaluate(run)
    run.step("hub", run.path("hub", "family.json"), lambda: stage_family(run))
    write_report(run)
    console.print(
        f"[bold green]report: {run.path('report', 'report.md')}[/bold green] "
        f"({time.monotonic() - started:.0f} s this run)"
    )
    return run.path("report", "report.md")
