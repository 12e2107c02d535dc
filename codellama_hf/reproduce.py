"""Code Llama in miniature: the whole recipe end to end on a CPU, and a report that tests the paper's claims.

`codellama-hf reproduce --preset tiny --out DIR [--seed N]` runs, each step skipped when its output is complete
(so an interrupted run continues where it stopped, and a training stage resumes from its latest checkpoint):

 1. tokenizer     a tiny "Llama 2" tokenizer (4,000 pieces, no infilling pieces);
 2. pretrain      a tiny Llama pretrained briefly on local natural language (the stand-in for Llama 2);
 3. meta          that model saved in Meta's consolidated format (convert.hf_to_meta);
 4. init          converted back to HF with the Code Llama tokenizer and the vocabulary extension (4,000 -> 4,016
                  rows at the mean embedding: convert.meta_to_hf(extend_vocab=True));
 5. data          the code corpus' training files cut into blocks that fit the tiny context (so FIM applies);
 6. code          code stage with FIM (rate 0.9), and code-nofim: the same budget from the same start without FIM;
 7. python        Python stage continuing the code model;
 8. lcft          long-context fine-tuning of the code model: theta 1e6, sequences 4x the code stage's;
 9. selfinstruct  self-instruct with execution filtering (selfinstruct.generate_self_instruct), toy generator;
10. instruct      instruct stage (SFT on those dialogs + rehearsal) continuing the LCFT model;
11. evaluate      the claims' measurements on the corpus' held-out validation files (one cached JSON each);
12. hub           model cards and the family staged for the Hub (publish.hub.push_family, dry run);
13. report        DIR/report/report.md with PNGs and DIR/report/claims.json (only measured numbers).

Every training stage is the library's `run_stage` / `run_instruct` in its own subprocess (accelerate's state is a
process-wide singleton); "pretrain" is the miniature's stand-in for Llama 2's own pretraining.
The toy self-instruct generator is honest about what it is: a small fixed bank of interview problems
with unit tests and candidate solutions (some wrong), answering the paper's prompts (no tiny model can write
passing code); the tests, the sandbox and "keep the first passing solution" are the real pipeline.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console

from codellama_hf.io import write_json, write_jsonl, write_text

console = Console(highlight=False)
RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "tiny"
PRETRAIN = "pretrain"


# ---------------------------------------------------------------------------------------------------------------
# 1. Presets
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """Run length and batch of one training stage (the rest comes from recipes/configs/tiny/<stage>.yaml)."""

    max_steps: int
    seq_len: int
    tokens_per_step: int
    learning_rate: float

    def argv(self) -> list[str]:
        return [
            "--max_steps",
            str(self.max_steps),
            "--seq_len",
            str(self.seq_len),
            "--tokens_per_step",
            str(self.tokens_per_step),
            "--learning_rate",
            str(self.learning_rate),
            "--per_device_train_batch_size",
            str(min(2, self.tokens_per_step // self.seq_len)),
            "--warmup_steps",
            str(max(1, self.max_steps // 10)),
            "--logging_steps",
            str(max(1, self.max_steps // 20)),
            "--save_steps",
            str(max(1, self.max_steps // 2)),
            "--save_total_limit",
            "1",
        ]


@dataclass(frozen=True)
class Preset:
    stages: dict[str, Stage]
    eval_documents: int  # validation files per corpus for the loss measurements
    eval_tokens_per_file: int  # each file cut to this many tokens
    lcft_lengths: tuple[int, ...]  # 1x, 2x, 4x the code stage's seq_len
    infill_examples: int
    infill_max_new_tokens: int = 24
    instruct_problems: int = 8
    code_files: int | None = None  # training files cut into blocks for the code stage (None: all)


PRESETS = {
    "tiny": Preset(
        stages={
            PRETRAIN: Stage(40, 256, 2048, 3e-3),
            "code": Stage(60, 256, 2048, 3e-3),
            "python": Stage(30, 256, 2048, 1e-3),
            "lcft": Stage(16, 1024, 4096, 1e-3),
            "instruct": Stage(12, 512, 2048, 1e-3),
        },
        eval_documents=40,
        eval_tokens_per_file=1025,
        lcft_lengths=(256, 512, 1024),
        infill_examples=60,
    ),
    # A few steps of everything: the test's end-to-end run (numbers are plumbing checks only)
    "smoke": Preset(
        stages={
            PRETRAIN: Stage(2, 64, 256, 3e-3),
            "code": Stage(2, 64, 256, 3e-3),
            "python": Stage(2, 64, 256, 1e-3),
            "lcft": Stage(2, 256, 512, 1e-3),
            "instruct": Stage(2, 128, 256, 1e-3),
        },
        eval_documents=4,
        eval_tokens_per_file=257,
        lcft_lengths=(64, 128, 256),
        infill_examples=4,
        infill_max_new_tokens=8,
        instruct_problems=3,
        code_files=50,
    ),
}


# ---------------------------------------------------------------------------------------------------------------
# 2. The run folder and its steps
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Run:
    out: Path
    preset_name: str
    seed: int
    hub_endpoint: str | None = None
    timings: dict = field(default_factory=dict)

    @property
    def preset(self) -> Preset:
        return PRESETS[self.preset_name]

    def path(self, *parts) -> Path:
        return self.out.joinpath(*parts)

    def model(self, name: str) -> Path:
        return self.path("models", name)

    def command(self) -> str:
        return f"codellama-hf reproduce --preset {self.preset_name} --out {self.out} --seed {self.seed}"

    def step(self, name: str, done: Path, action) -> None:
        """Run `action` unless `done` exists (the step's last, atomically written output)."""
        if done.exists():
            console.print(f"[dim]skip {name}: {done} is complete[/dim]")
            return
        console.rule(f"[bold]{name}")
        started = time.monotonic()
        action()
        if not done.exists():
            raise RuntimeError(f"step {name} finished without writing {done}")
        self.timings[name] = round(time.monotonic() - started, 1)
        console.print(f"[green]{name} done in {self.timings[name]:.0f} s[/green]")


# ---------------------------------------------------------------------------------------------------------------
# 3. Training stages, each in its own subprocess
# ---------------------------------------------------------------------------------------------------------------


def _stage_entry(stage: str, argv: list[str]) -> None:
    """Body of a stage subprocess: the library's own stage runners."""
    if stage == "instruct":
        from codellama_hf.instruct import run_instruct

        run_instruct(default_config=RECIPES / "instruct.yaml", argv=argv)
        return
    from codellama_hf.training import run_stage

    run_stage(stage, default_config=RECIPES / f"{stage}.yaml", argv=argv)


def train(run: Run, stage: str, output: Path, overrides: list[str]) -> None:
    """One stage in a subprocess in the run folder, resuming from the latest checkpoint in `output` if an earlier
    run was cut."""
    argv = [
        *run.preset.stages[stage].argv(),
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
    code = "import sys; from codellama_hf.reproduce import _stage_entry; _stage_entry(sys.argv[1], sys.argv[2:])"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "WORLD_SIZE": "1"}
    console.print(f"[dim]{stage}: {' '.join(argv)}[/dim]")
    result = subprocess.run([sys.executable, "-c", code, stage, *argv], check=False, env=env, cwd=run.out)
    if result.returncode:
        raise RuntimeError(
            f"the {stage} stage failed (exit {result.returncode}) in {output}; rerun the same command "
            "to resume from its latest checkpoint"
        )


# ---------------------------------------------------------------------------------------------------------------
# 4. Code documents that fit a tiny context
# ---------------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------------
# 5. Self-instruct with a toy generator
# ---------------------------------------------------------------------------------------------------------------

# Interview problems with the paper's test format and candidate solutions, the first of each deliberately wrong:
# what a weak code model would produce, so execution filtering has something to filter.
TOY_PROBLEMS = [
    (
        "Write a Python function `reverse_words(s)` that reverses the order of the words in a sentence.",
        ["reverse_words('a b c') == 'c b a'", "reverse_words('hello') == 'hello'", "reverse_words('') == ''"],
        [
            "def reverse_words(s):\n    return s[::-1]",
            "def reverse_words(s):\n    return ' '.join(reversed(s.split()))",
        ],
    ),
    (
        "Write a Python function `is_palindrome(s)` that checks whether a string reads the same backwards.",
        ["is_palindrome('abba') is True", "is_palindrome('abc') is False", "is_palindrome('') is True"],
        ["def is_palindrome(s):\n    return s == sorted(s)", "def is_palindrome(s):\n    return s == s[::-1]"],
    ),
    (
        "Write a Python function `count_vowels(s)` that returns the number of vowels in a string.",
        ["count_vowels('hello') == 2", "count_vowels('xyz') == 0", "count_vowels('AEIOU') == 5"],
        [
            "def count_vowels(s):\n    return sum(c in 'aeiou' for c in s)",
            "def count_vowels(s):\n    return sum(c in 'aeiouAEIOU' for c in s)",
        ],
    ),
    (
        "Write a Python function `fib(n)` that returns the n-th Fibonacci number, with fib(0) = 0.",
        ["fib(0) == 0", "fib(1) == 1", "fib(10) == 55"],
        [
            "def fib(n):\n    return fib(n - 1) + fib(n - 2)",
            "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a",
        ],
    ),
    (
        "Write a Python function `flatten(xs)` that flattens a list of lists by one level.",
        ["flatten([[1], [2, 3]]) == [1, 2, 3]", "flatten([]) == []", "flatten([[], [4]]) == [4]"],
        ["def flatten(xs):\n    return xs[0]", "def flatten(xs):\n    return [x for part in xs for x in part]"],
    ),
    (
        "Write a Python function `second_largest(xs)` that returns the second largest distinct number of a list.",
        ["second_largest([1, 3, 2]) == 2", "second_largest([5, 5, 4]) == 4", "second_largest([-1, -2]) == -2"],
        [
            "def second_largest(xs):\n    return sorted(xs)[-2]",
            "def second_largest(xs):\n    return sorted(set(xs))[-2]",
        ],
    ),
    (
        "Write a Python function `char_histogram(s)` that maps each character of a string to its count.",
        ["char_histogram('aab') == {'a': 2, 'b': 1}", "char_histogram('') == {}"],
        [
            "def char_histogram(s):\n    return {c: 1 for c in s}",
            "def char_histogram(s):\n    from collections import Counter\n    return dict(Counter(s))",
        ],
    ),
    (
        "Write a Python function `gcd(a, b)` that returns the greatest common divisor of two positive integers.",
        ["gcd(12, 18) == 6", "gcd(7, 3) == 1", "gcd(5, 5) == 5"],
        [
            "def gcd(a, b):\n    while b:\n        a = b\n    return a",  # never ends: a timeout
            "def gcd(a, b):\n    while b:\n        a, b = b, a % b\n    return a",
        ],
    ),
]


class ToyGenerator:
    """A stand-in for Code Llama 7B writing tests and solutions: answers Figs. 11-12's prompts from TOY_PROBLEMS.

    Tests come back in the [TESTS] format with the "#Test case n:" comments; the n solutions cycle through the
    problem's candidates (wrong first), in the [PYTHON] format, so parsing, sandboxing and keeping the first
    passing solution all run for real on generated text.
    """

    name = "toy-reference-bank"

    def __init__(self):
        self.by_question = {q: (tests, solutions) for q, tests, solutions in TOY_PROBLEMS}

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
    questions.write_text("".join(q + "\n" for q, _, _ in TOY_PROBLEMS[: run.preset.instruct_problems]))
    config = SelfInstructConfig(
        out_dir=out, questions_file=questions, solutions=2, timeout=2.0, workers=2, seed=run.seed
    )
    summary = generate_self_instruct(config, ToyGenerator(), allow_code_execution=True)
    console.print(
        f"self-instruct: {summary['questions_kept']} of {summary['questions']} questions kept; "
        f"solutions {summary['solutions']}"
    )


# ---------------------------------------------------------------------------------------------------------------
# 6. Measurements (validation splits only), each cached as one JSON file
# ---------------------------------------------------------------------------------------------------------------


def _load(path: Path):
    from codellama_hf.generation import load_model

    return load_model(str(path), dtype="float32", device="cpu")


def _validation_texts(kind: str, documents: int) -> list[str]:
    from codellama_hf.corpus import embedded_corpus

    return list(embedded_corpus(kind, "validation", max_documents=documents)["text"])


def validation_loss(run: Run, model_dir: Path, kind: str) -> dict:
    """Left-to-right loss on held-out files at the code stage's training length (mean NLL per token)."""
    from codellama_hf.evaluation.long_context import perplexity_by_length

    length = run.preset.stages["code"].seq_len
    model, tokenizer = _load(model_dir)
    result = perplexity_by_length(
        model,
        tokenizer,
        _validation_texts(kind, run.preset.eval_documents),
        [length],
        max_tokens_per_text=run.preset.eval_tokens_per_file,
    )
    ppl = result["perplexity"][str(length)]
    return {
        "model": model_dir.name,
        "corpus": f"{kind} (validation)",
        "context": length,
        "loss": math.log(ppl),
        "perplexity": ppl,
        "files": result["files"],
        "scored_tokens": result["scored_tokens"],
    }


def perplexity_by_context(run: Run, model_dir: Path) -> dict:
    from codellama_hf.evaluation.long_context import perplexity_by_length

    model, tokenizer = _load(model_dir)
    texts = _validation_texts("code", run.preset.eval_documents)
    result = perplexity_by_length(
        model, tokenizer, texts, run.preset.lcft_lengths, max_tokens_per_text=run.preset.eval_tokens_per_file
    )
    return {"model": model_dir.name, **result}


def infilling_examples(run: Run) -> list[dict]:
    """Single-line middles cut from held-out Python files: one line per file, chosen by the seed."""
    examples = []
    rng = random.Random(run.seed)
    for text in _validation_texts("python", 4 * run.preset.infill_examples):
        lines = text.splitlines(keepends=True)
        candidates = [
            i
            for i, line in enumerate(lines[5:-5], 5)
            if 8 <= len(line.strip()) <= 60 and not line.strip().startswith(("#", '"', "'"))
        ]
        if not candidates:
            continue
        i = rng.choice(candidates)
        prefix, suffix = "".join(lines[:i])[-600:], "".join(lines[i + 1 :])[:300]
        examples.append({"prefix": prefix, "suffix": suffix, "middle": lines[i]})
        if len(examples) == run.preset.infill_examples:
            break
    return examples


def infilling_exact_match(run: Run, model_dir: Path, examples: list[dict]) -> dict:
    """Greedy infilling in both formats; a hit when the first generated line equals the removed line."""
    from codellama_hf.generation import infill

    model, tokenizer = _load(model_dir)
    scores = {}
    for name, suffix_first in (("psm", False), ("spm", True)):
        middles = infill(
            model,
            tokenizer,
            [e["prefix"] for e in examples],
            [e["suffix"] for e in examples],
            suffix_first=suffix_first,
            max_new_tokens=run.preset.infill_max_new_tokens,
            batch_size=8,
            progress=f"infilling {model_dir.name} {name}",
        )
        hits = [
            (m.splitlines() or [""])[0].strip() == e["middle"].strip() for m, e in zip(middles, examples, strict=False)
        ]
        scores[name] = {
            "exact_match": sum(hits) / len(hits),
            "hits": sum(hits),
            "examples": len(hits),
            "middle_loss": middle_loss(model, tokenizer, examples, suffix_first),
            "first_completions": middles[:3],
        }
    return {"model": model_dir.name, **scores}


def middle_loss(model, tokenizer, examples: list[dict], suffix_first: bool) -> float:
    """Mean NLL per token of the true middle and <EOT> after Meta's infilling prompt: infilling ability measured
    below the level where greedy decoding gets whole lines right."""
    import torch

    from codellama_hf.tokenizer import encode_infilling, infill_ids, infilling_prompt

    eot = infill_ids(tokenizer).eot
    total, count = 0.0, 0
    with torch.no_grad():
        for e in examples:
            prompt = infilling_prompt(tokenizer, e["prefix"], e["suffix"], suffix_first=suffix_first)
            target = [*encode_infilling(tokenizer, e["middle"].rstrip("\n")), eot]
            logits = model(torch.tensor([prompt + target])).logits[0, len(prompt) - 1 : -1]
            total += torch.nn.functional.cross_entropy(logits.float(), torch.tensor(target), reduction="sum").item()
            count += len(target)
    return total / count


def evaluate(run: Run) -> None:
    models = {name: run.model(name) for name in ("code", "code-nofim", "python", "lcft")}
    measurements = {
        "loss_code_fim": lambda: validation_loss(run, models["code"], "code"),
        "loss_code_nofim": lambda: validation_loss(run, models["code-nofim"], "code"),
        "loss_python_code": lambda: validation_loss(run, models["code"], "python"),
        "loss_python_python": lambda: validation_loss(run, models["python"], "python"),
        "ppl_code": lambda: perplexity_by_context(run, models["code"]),
        "ppl_lcft": lambda: perplexity_by_context(run, models["lcft"]),
        "infill_fim": lambda: infilling_exact_match(run, models["code"], infilling_examples(run)),
        "infill_nofim": lambda: infilling_exact_match(run, models["code-nofim"], infilling_examples(run)),
    }
    for name, measure in measurements.items():
        path = run.path("eval", f"{name}.json")
        run.step(f"evaluate {name}", path, lambda measure=measure, path=path: write_json(path, measure()))
    _write_results_for_cards(run)


def _write_results_for_cards(run: Run) -> None:
    """The family members' measured numbers as codellama_hf.eval/1 results, which the model cards show."""
    from codellama_hf.evaluation.report import new_result, write_result

    ppl = json.loads(run.path("eval", "ppl_lcft.json").read_text())
    result = new_result(
        "perplexity",
        str(run.model("lcft")),
        details=ppl,
        num_problems=ppl["files"],
        metrics={f"perplexity@{k}": v for k, v in ppl["perplexity"].items()},
        config={"corpus": "embedded code (validation)", "lengths": ppl["lengths"]},
    )
    write_result(run.path("eval", "results", "lcft"), result)
    loss = json.loads(run.path("eval", "loss_python_python.json").read_text())
    result = new_result(
        "perplexity",
        str(run.model("python")),
        num_problems=loss["files"],
        metrics={f"perplexity@{loss['context']}": loss["perplexity"]},
        config={"corpus": "embedded python (validation)"},
    )
    write_result(run.path("eval", "results", "python"), result)


# ---------------------------------------------------------------------------------------------------------------
# 7. Model cards and the family staged for the Hub (dry run)
# ---------------------------------------------------------------------------------------------------------------

NAMESPACE = "codellama-hf-miniature"


def stage_family(run: Run) -> None:
    """push_family's dry run: cards and repositories staged; compared with the Hub only with --hub-endpoint."""
    from unittest import mock

    from huggingface_hub import constants

    from codellama_hf.publish.hub import push_family
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
    try:  # without an endpoint the client is put in offline mode: staging completes, the comparison stops at once
        with mock.patch.object(constants, "HF_HUB_OFFLINE", run.hub_endpoint is None or constants.HF_HUB_OFFLINE):
            report = push_family(config, token=None)
        compared = True
    except RuntimeError as err:  # offline: staging is complete, only the comparison with the Hub could not run
        console.print(f"[yellow]{err}; every staged file counts as new[/yellow]")
        compared, report = False, {"dry_run": True, "repos": {}}
        for member in members:
            repo = f"{NAMESPACE}/{config.repo_name(member.variant)}"
            folder = stage_dir / repo.split("/", 1)[1]
            files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
            report["repos"][repo] = {"slot": member.slot, "folder": str(folder), "exists": False, "upload": files}
    report["compared_with_hub"] = compared
    write_json(stage_dir / "family.json", report)


# ---------------------------------------------------------------------------------------------------------------
# 8. Report: claims.json (numbers only, deterministic given the seed), report.md and PNGs
# ---------------------------------------------------------------------------------------------------------------

LOSS_CURVE_MODELS = (PRETRAIN, "code", "code-nofim", "python", "lcft", "instruct")


def _read(run: Run, name: str) -> dict:
    return json.loads(run.path("eval", f"{name}.json").read_text())


def claims(run: Run) -> dict:
    """Each claim's numbers and verdict, from the cached measurements."""
    fim, nofim = _read(run, "loss_code_fim"), _read(run, "loss_code_nofim")
    gap = fim["loss"] - nofim["loss"]
    small = 0.05 * nofim["loss"]  # "little": within 5% of the no-FIM loss (paper Table 5: about 1-2%)
    infill_fim, infill_nofim = _read(run, "infill_fim"), _read(run, "infill_nofim")
    ppl_code, ppl_lcft = _read(run, "ppl_code"), _read(run, "ppl_lcft")
    base = str(run.preset.stages["code"].seq_len)
    beyond = [k for k in ppl_code["perplexity"] if int(k) > int(base)]
    py_code, py_python = _read(run, "loss_python_code"), _read(run, "loss_python_python")
    curves = {}
    for name in LOSS_CURVE_MODELS:
        history = json.loads((run.model(name) / "trainer_state.json").read_text())["log_history"]
        points = [(e["step"], e["loss"]) for e in history if "loss" in e]
        curves[name] = {"steps": [s for s, _ in points], "loss": [v for _, v in points]}
    return {
        "preset": run.preset_name,
        "seed": run.seed,
        "1_fim_costs_little_left_to_right": {
            "loss_fim": fim["loss"],
            "loss_no_fim": nofim["loss"],
            "difference": gap,
            "threshold": small,
            "held": gap <= small,
            "scored_tokens": fim["scored_tokens"],
        },
        "2_fim_gives_infilling": {
            "exact_match": {
                fmt: {"fim": infill_fim[fmt]["exact_match"], "no_fim": infill_nofim[fmt]["exact_match"]}
                for fmt in ("psm", "spm")
            },
            "middle_loss": {
                fmt: {"fim": infill_fim[fmt]["middle_loss"], "no_fim": infill_nofim[fmt]["middle_loss"]}
                for fmt in ("psm", "spm")
            },
            "examples": infill_fim["psm"]["examples"],
            "held": all(infill_fim[f]["exact_match"] > infill_nofim[f]["exact_match"] for f in ("psm", "spm")),
        },
        "3_lcft_lowers_long_context_perplexity": {
            "base_length": int(base),
            "perplexity_code": ppl_code["perplexity"],
            "perplexity_lcft": ppl_lcft["perplexity"],
            # LCFT also trains more tokens; PPL(L) / PPL(base) separates extrapolation from overall improvement
            "ratio_to_base_code": {k: v / ppl_code["perplexity"][base] for k, v in ppl_code["perplexity"].items()},
            "ratio_to_base_lcft": {k: v / ppl_lcft["perplexity"][base] for k, v in ppl_lcft["perplexity"].items()},
            "held": all(ppl_lcft["perplexity"][k] < ppl_code["perplexity"][k] for k in beyond),
        },
        "4_python_stage_lowers_python_loss": {
            "loss_code_model": py_code["loss"],
            "loss_python_model": py_python["loss"],
            "held": py_python["loss"] < py_code["loss"],
        },
        "5_loss_curves": curves,
    }


def _plots(run: Run, numbers: dict, folder: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = {}
    curves = numbers["5_loss_curves"]
    fig, axes = plt.subplots(2, 3, figsize=(12, 6))
    for ax, (name, curve) in zip(axes.flat, curves.items(), strict=False):
        ax.plot(curve["steps"], curve["loss"], marker=".")
        ax.set(title=name, xlabel="step", ylabel="training loss")
    fig.tight_layout()
    fig.savefig(folder / "loss_curves.png", dpi=90)
    plt.close(fig)
    files["loss_curves"] = "loss_curves.png"

    claim = numbers["3_lcft_lowers_long_context_perplexity"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, key in (("code model (theta 1e4)", "perplexity_code"), ("LCFT model (theta 1e6)", "perplexity_lcft")):
        lengths = sorted(claim[key], key=int)
        ax.plot([int(k) for k in lengths], [claim[key][k] for k in lengths], marker="o", label=label)
    ax.axvline(claim["base_length"], color="gray", linestyle=":", label="code stage seq_len")
    ax.set(xscale="log", xlabel="context length (tokens)", ylabel="perplexity (validation code)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "perplexity_by_length.png", dpi=90)
    plt.close(fig)
    files["perplexity"] = "perplexity_by_length.png"

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(12, 3.5))
    c1, c4 = numbers["1_fim_costs_little_left_to_right"], numbers["4_python_stage_lowers_python_loss"]
    ax1.bar(["FIM", "no FIM"], [c1["loss_fim"], c1["loss_no_fim"]], color=["C0", "C1"])
    ax1.set(title="claim 1: code validation loss", ylabel="loss (nats/token)")
    em = numbers["2_fim_gives_infilling"]["exact_match"]
    x = range(2)
    ax2.bar([i - 0.2 for i in x], [em[f]["fim"] for f in ("psm", "spm")], 0.4, label="FIM")
    ax2.bar([i + 0.2 for i in x], [em[f]["no_fim"] for f in ("psm", "spm")], 0.4, label="no FIM")
    top = max([0.1] + [em[f][m] for f in ("psm", "spm") for m in ("fim", "no_fim")])
    ax2.set(
        title="claim 2: single-line infilling",
        ylabel="exact match",
        xticks=list(x),
        xticklabels=["PSM", "SPM"],
        ylim=(0, 1.15 * top),
    )
    ax2.legend()
    ax3.bar(["code model", "Python model"], [c4["loss_code_model"], c4["loss_python_model"]], color=["C0", "C2"])
    ax3.set(title="claim 4: Python validation loss", ylabel="loss (nats/token)")
    fig.tight_layout()
    fig.savefig(folder / "claims.png", dpi=90)
    plt.close(fig)
    files["claims"] = "claims.png"
    return files


def _verdict(held: bool) -> str:
    return "**held**" if held else "**did not hold** at this scale"


def write_report(run: Run) -> None:
    folder = run.path("report")
    folder.mkdir(parents=True, exist_ok=True)
    numbers = claims(run)
    write_json(folder / "claims.json", numbers)
    plots = _plots(run, numbers, folder)
    c1, c2 = numbers["1_fim_costs_little_left_to_right"], numbers["2_fim_gives_infilling"]
    c3, c4 = numbers["3_lcft_lowers_long_context_perplexity"], numbers["4_python_stage_lowers_python_loss"]
    stages = run.preset.stages
    family = json.loads(run.path("hub", "family.json").read_text())
    selfinstruct = json.loads(run.path("selfinstruct", "summary.json").read_text())
    em, ml = c2["exact_match"], c2["middle_loss"]
    infill_rows = "\n".join(
        f"| {fmt.upper()} | {em[fmt]['fim']:.3f} | {em[fmt]['no_fim']:.3f} | "
        f"{ml[fmt]['fim']:.3f} | {ml[fmt]['no_fim']:.3f} |"
        for fmt in ("psm", "spm")
    )
    outcomes = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in selfinstruct["solutions"].items() if v)
    hub_note = (
        "Compared with the Hub."
        if family["compared_with_hub"]
        else "Staged offline, not compared with a Hub: every staged file counts as new (`--hub-endpoint` compares)."
    )
    ppl_rows = "\n".join(
        f"| {k} | {c3['perplexity_code'][k]:.2f} ({c3['ratio_to_base_code'][k]:.3f}) | "
        f"{c3['perplexity_lcft'][k]:.2f} ({c3['ratio_to_base_lcft'][k]:.3f}) |"
        for k in sorted(c3["perplexity_code"], key=int)
    )
    stage_rows = "\n".join(
        f"| {name} | {s.max_steps} | {s.seq_len} | {s.tokens_per_step:,} | {s.learning_rate:g} |"
        for name, s in stages.items()
    )
    repos = "\n".join(
        f"- `{repo}` ({r['slot']}): {len(r['upload'])} files would be uploaded from `{r['folder']}`"
        for repo, r in family["repos"].items()
    )
    text = f"""# Code Llama in miniature ({run.preset_name} preset, seed {run.seed})

Reproduce every number and figure here with:

    {run.command()}

(each step is skipped when its output exists; delete `{run.path("eval")}` and `{run.path("report")}` to re-measure).
Numbers come from `claims.json` beside this file; loss and perplexity are measured on the embedded corpus'
held-out **validation** files (split by file), never on training data. The models have a few million parameters
and train for a few dozen steps: the question is whether the paper's *qualitative* findings reappear.

Pipeline: tiny "Llama 2" pretrained on natural language -> Meta format (`{run.path("meta")}`) -> HF with the
Code Llama tokenizer and vocabulary extension (`{run.model("init")}`) -> code stage with FIM (and a no-FIM twin
with the same budget) -> Python stage -> long-context stage (theta 1e6, {stages["lcft"].seq_len}-token sequences)
-> self-instruct ({selfinstruct["questions_kept"]} of {selfinstruct["questions"]} questions kept after execution
filtering; toy generator, see below) -> instruct stage -> evaluation -> model cards -> family staged for the Hub.

| stage | steps | seq_len | tokens/step | peak lr |
|---|---|---|---|---|
{stage_rows}

## Claim 1: FIM costs little left-to-right ability (paper Table 5): {_verdict(c1["held"])}

Left-to-right validation loss on held-out code at {stages["code"].seq_len} tokens, same budget from the same start:
FIM model **{c1["loss_fim"]:.4f}**, no-FIM model **{c1["loss_no_fim"]:.4f}** (difference {c1["difference"]:+.4f};
"little" = at most {c1["threshold"]:.4f}, 5% of the no-FIM loss; {c1["scored_tokens"]:,} scored tokens).

## Claim 2: FIM gives infilling ability: {_verdict(c2["held"])}

Greedy single-line infilling of {c2["examples"]} lines cut from held-out files (exact match of the first generated
line, whitespace-stripped):

| format | exact match, FIM model | exact match, no-FIM model | middle loss, FIM model | middle loss, no-FIM model |
|---|---|---|---|---|
{infill_rows}

The verdict is on exact match. Middle loss (mean NLL per token of the true line and <EOT> after the infilling
prompt) shows whether the model learned to use the suffix at all, below the level where greedy decoding
reproduces whole lines.

## Claim 3: LCFT with theta 1e6 lowers perplexity beyond the base length: {_verdict(c3["held"])}

Perplexity on held-out code by context length (code stage trained at {c3["base_length"]} tokens, LCFT at
{stages["lcft"].seq_len}); the claim is judged at the lengths beyond {c3["base_length"]}. In brackets: perplexity
relative to the model's own perplexity at {c3["base_length"]} tokens (LCFT also trains on more tokens, so this
ratio is the part of the change that is about extrapolation).

| context | code model | LCFT model |
|---|---|---|
{ppl_rows}

![perplexity by context length]({plots["perplexity"]})

## Claim 4: the Python stage lowers Python loss: {_verdict(c4["held"])}

Validation loss on held-out Python: code model **{c4["loss_code_model"]:.4f}**, Python model
**{c4["loss_python_model"]:.4f}**.

![claims 1, 2 and 4]({plots["claims"]})

## Claim 5: loss curves of every stage

![training loss per stage]({plots["loss_curves"]})

## Self-instruct at toy scale

The pipeline is the real one (the paper's prompts, parsing of [TESTS]/[PYTHON] blocks, every solution run against
the tests in the sandbox, the first passing one kept), but the text comes from a **toy generator**: a fixed bank
of {len(TOY_PROBLEMS)} interview problems with tests and candidate solutions, the first of each deliberately wrong
(a tiny model cannot write passing code). Outcomes of the {selfinstruct["solutions_run"]} solutions run: {outcomes}.

## Family staged for the Hub (dry run)

{repos}

{hub_note}
"""
    write_text(folder / "report.md", text)
    write_json(folder / "timings.json", run.timings)


# ---------------------------------------------------------------------------------------------------------------
# 9. The whole run
# ---------------------------------------------------------------------------------------------------------------


def reproduce(out: str | os.PathLike, *, preset: str = "tiny", seed: int = 0, hub_endpoint: str | None = None) -> Path:
    """Run (or continue) the miniature pipeline into `out`; returns the report's path."""
    if preset not in PRESETS:
        raise ValueError(f"--preset {preset}: choose one of {', '.join(PRESETS)}")
    run = Run(Path(out).resolve(), preset, seed, hub_endpoint)
    run.out.mkdir(parents=True, exist_ok=True)
    settings = {"preset": preset, "seed": seed, "stages": {k: asdict(v) for k, v in run.preset.stages.items()}}
    saved = run.path("settings.json")
    if saved.is_file() and json.loads(saved.read_text()) != settings:
        raise ValueError(
            f"{run.out} holds a run with other settings ({saved}); use another --out or the same --preset and --seed"
        )
    write_json(saved, settings)
    started = time.monotonic()
    from codellama_hf.convert import hf_to_meta, meta_to_hf
    from codellama_hf.tokenizer import build_tiny_tokenizer

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
    for name in ("python", "lcft"):
        folder = run.model(name)
        run.step(
            name,
            folder / "lineage.json",
            lambda f=folder, n=name: train(run, n, f, ["--model_name_or_path", str(run.model("code"))]),
        )
    run.step("selfinstruct", run.path("selfinstruct", "summary.json"), lambda: self_instruct(run))
    instruct = run.model("instruct")
    sources = json.dumps({"instruct": ["selfinstruct/dataset"]})  # relative to the run folder, like the code data
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


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "reproduce",
        help="Code Llama in miniature: the whole recipe on a CPU, with a report on the paper's claims",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--preset",
        default="tiny",
        choices=sorted(PRESETS),
        help="tiny: the report's run (~20 min on 2 cores); smoke: a few steps of everything",
    )
    parser.add_argument("--out", type=Path, required=True, help="run folder (rerun the same command to continue)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every stage and sampling (default 0)")
    parser.add_argument(
        "--hub-endpoint", help="compare the staged family with this Hub in the dry run (default: stage only, offline)"
    )
    parser.set_defaults(
        func=lambda args: reproduce(args.out, preset=args.preset, seed=args.seed, hub_endpoint=args.hub_endpoint) and 0
    )
