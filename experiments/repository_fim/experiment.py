"""Repository-level FIM against file-level FIM, same base and same budget, scored on cross-file infilling.

Two arms train the code stage (`recipes/code.py`, FIM rate 0.9, PSM/SPM half and half) from the same base folder,
for the same steps of the same tokens per step, on the same synthetic repositories
(codellama_hf/evaluation/synthetic_repositories.py):

- file-level: every file is its own document (the paper's FIM);
- repository-level: `--repository_samples true`, each repository's files in dependency order behind
  `# file: PATH` headers, FIM on a span of the last file (codellama_hf/data/repository.py).

Both are then scored on held-out repositories' cross-file infilling tasks (codellama_hf/evaluation/crossfile.py):
a line whose name is defined only in another file, prompted with and without that file in front of the prefix.
Exact match gets a Wilson interval; middle loss a normal interval over tasks, and the paired differences (context
gain, arm gap) are computed task by task. Every step is skipped when its output exists, so a cut run continues.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from codellama_hf.evaluation.synthetic_repositories import write_repositories
from codellama_hf.io import changed_settings, write_json

ROOT = Path(__file__).resolve().parents[2]
ARMS = {"file-level": "false", "repository-level": "true"}
VARIANTS = ("with_context", "without_context")


@dataclass(frozen=True)
class Preset:
    base: str  # "tiny": a random 1.8M-parameter Llama (tiny tokenizer); "smollm2": SmolLM2-135M + FIM tokens
    train_repositories: int
    heldout_repositories: int
    max_steps: int
    seq_len: int
    tokens_per_step: int
    learning_rate: float
    tasks_per_repository: int = 2
    max_new_tokens: int = 24
    context_tokens: int = 512
    evaluate_base: bool = False  # score the base too (a random base scores nothing: off for tiny)
    dtype: str = "float32"


PRESETS = {
    # The run whose report is committed: about 10 minutes on 2 idle CPU cores (256,000 tokens per arm).
    "cpu": Preset("tiny", 1500, 40, 100, 320, 2560, 3e-3),
    # Plumbing only (the smoke test).
    "smoke": Preset("tiny", 8, 2, 1, 320, 640, 3e-3, max_new_tokens=4),
    # The real pretrained base, for a GPU machine (not run here: ~1 min per step on the shared CPU).
    "smollm2": Preset("smollm2", 3000, 60, 300, 512, 8192, 1e-4, evaluate_base=True, dtype="bfloat16"),
}


def _step(name: str, done: Path, action, timings: dict, timings_file: Path) -> None:
    if done.exists():
        print(f"skip {name}: {done} exists", flush=True)
        return
    print(f"== {name}", flush=True)
    started = time.monotonic()
    action()
    if not done.exists():
        raise RuntimeError(f"step {name} finished without writing {done}")
    timings[name] = round(time.monotonic() - started, 1)
    write_json(timings_file, timings)


def build_base(preset: Preset, out: Path, seed: int) -> None:
    """The one starting point of both arms, with the four infilling tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    from codellama_hf.io import atomic_dir

    if preset.base == "tiny":
        from codellama_hf.models import llama_config
        from codellama_hf.training.model import tiny_tokenizer_dir

        tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir(infilling=True))
        torch.manual_seed(seed)
        model = LlamaForCausalLM(llama_config("tiny", vocab_size=len(tokenizer)))
    elif preset.base == "smollm2":
        from codellama_hf.assets import smollm2_dir
        from codellama_hf.tokenizer import add_fim_tokens

        tokenizer = AutoTokenizer.from_pretrained(smollm2_dir())
        add_fim_tokens(tokenizer)
        model = AutoModelForCausalLM.from_pretrained(smollm2_dir(), dtype=torch.float32)
        torch.manual_seed(seed)
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    else:
        raise ValueError(f"unknown base {preset.base!r}: tiny or smollm2")
    with atomic_dir(out) as staged:
        model.save_pretrained(staged)
        tokenizer.save_pretrained(staged)
        if preset.base == "tiny":  # the SentencePiece model the tiny tokenizer was built from, for portable folders
            from codellama_hf.export.model_folder import complete_model_folder

            complete_model_folder(staged, sentencepiece=tiny_tokenizer_dir(infilling=True) / "tokenizer.model")


def train_arm(preset: Preset, run: Path, arm: str, seed: int) -> None:
    """One arm: the code stage's public recipe in a subprocess (accelerate's state is per process)."""
    rows = preset.tokens_per_step // preset.seq_len
    argv = {
        "model_name_or_path": run / "models" / "base",
        "dtype": preset.dtype,
        "dataset_mixture": "none",
        "dataset_sources": run / "data" / "train",
        "repository_samples": ARMS[arm],
        "repository_key_depth": 1,
        "fim_rate": 0.9,
        "fim_spm_rate": 0.5,
        "seq_len": preset.seq_len,
        "tokens_per_step": preset.tokens_per_step,
        "per_device_train_batch_size": min(rows, 8),
        "max_steps": preset.max_steps,
        "learning_rate": preset.learning_rate,
        "warmup_steps": max(1, preset.max_steps // 10),
        "logging_steps": max(1, preset.max_steps // 30),
        "save_steps": preset.max_steps,
        "save_total_limit": 1,
        "packing_buffer": 64,
        "data_streams_per_process": 1,
        "dataloader_num_workers": 0,
        "output_dir": run / "models" / arm,
        "overwrite_output_dir": "false",
        "resume_from_checkpoint": "latest",
        "seed": seed,
        "report_to": "none",
        "disable_tqdm": "true",
    }
    command = [sys.executable, str(ROOT / "recipes" / "code.py")]
    for key, value in argv.items():
        command += [f"--{key}", str(value)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "WORLD_SIZE": "1"}
    result = subprocess.run(command, check=False, env=env, cwd=run)
    if result.returncode:
        raise RuntimeError(f"the {arm} arm failed (exit {result.returncode}); rerun the same command to resume")


def _mean_ci(values: list[float]) -> dict:
    """Mean and its 95% normal interval over tasks."""
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    half = 1.96 * sd / math.sqrt(n) if n else 0.0
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n}


def _rate(hits: list[bool]) -> dict:
    from codellama_hf.evaluation.passk import wilson_interval

    low, high = wilson_interval(sum(hits), len(hits))
    return {"rate": sum(hits) / len(hits), "k": sum(hits), "n": len(hits), "low": low, "high": high}


def summarize(records: list[dict]) -> dict:
    """Exact match (Wilson) and middle loss per variant, and the paired context gain, from evaluate_tasks' records."""
    out = {}
    for variant in VARIANTS:
        out[variant] = {
            "exact_match": _rate([r[f"exact_{variant}"] for r in records]),
            "middle_loss": _mean_ci([r[f"loss_{variant}"] for r in records]),
        }
    out["context_gain"] = _mean_ci([r["loss_without_context"] - r["loss_with_context"] for r in records])
    return out


def evaluate_model(preset: Preset, run: Path, name: str, model_dir: Path, out: Path) -> None:
    from codellama_hf.evaluation.crossfile import build_tasks, evaluate_tasks
    from codellama_hf.generation import load_model

    model, tokenizer = load_model(str(model_dir), dtype=preset.dtype)
    roots = sorted(p for p in (run / "data" / "heldout").iterdir() if p.is_dir())
    tasks, dropped = build_tasks(
        roots, tokenizer, per_repository=preset.tasks_per_repository, context_tokens=preset.context_tokens
    )
    result = evaluate_tasks(model, tokenizer, tasks, max_new_tokens=preset.max_new_tokens, batch_size=8)
    summary = summarize(result["records"])
    write_json(out, {"model": name, "tasks": len(tasks), "dropped": dict(dropped), **summary, **result})


def _paired_gap(a: list[dict], b: list[dict]) -> dict:
    """b minus a, task by task (same tasks, same order): exact-match discordance and the middle-loss gap."""
    if [r["task_id"] for r in a] != [r["task_id"] for r in b]:
        raise ValueError("the two arms were scored on different tasks")
    gap = {}
    for variant in VARIANTS:
        only_b = sum(rb[f"exact_{variant}"] and not ra[f"exact_{variant}"] for ra, rb in zip(a, b, strict=True))
        only_a = sum(ra[f"exact_{variant}"] and not rb[f"exact_{variant}"] for ra, rb in zip(a, b, strict=True))
        losses = [ra[f"loss_{variant}"] - rb[f"loss_{variant}"] for ra, rb in zip(a, b, strict=True)]
        gap[variant] = {"exact_only_second": only_b, "exact_only_first": only_a, "loss_reduction": _mean_ci(losses)}
    return gap


def training_facts(model_dir: Path) -> dict:
    state = json.loads((model_dir / "trainer_state.json").read_text())
    history = state["log_history"]
    points = [(e["step"], e["loss"]) for e in history if "loss" in e]
    seen = [e["num_input_tokens_seen"] for e in history if "num_input_tokens_seen" in e]
    return {
        "steps": state["global_step"],
        "tokens_seen": seen[-1] if seen else None,
        "loss_curve": {"steps": [s for s, _ in points], "loss": [v for _, v in points]},
    }


def results(run: Path, preset_name: str, seed: int) -> dict:
    """Everything the report states, from the cached evaluation files."""
    evals = {arm: json.loads((run / "eval" / f"{arm}.json").read_text()) for arm in ARMS}
    file_level, repo_level = (evals[a]["records"] for a in ARMS)
    gap = _paired_gap(file_level, repo_level)["with_context"]
    helped = gap["loss_reduction"]["low"] > 0 and gap["exact_only_second"] >= gap["exact_only_first"]
    out = {
        "preset": preset_name,
        "settings": asdict(PRESETS[preset_name]),
        "seed": seed,
        "tasks": evals["file-level"]["tasks"],
        "arms": {arm: {k: evals[arm][k] for k in (*VARIANTS, "context_gain")} for arm in ARMS},
        "training": {arm: training_facts(run / "models" / arm) for arm in ARMS},
        "repository_minus_file": _paired_gap(file_level, repo_level),
        "repository_level_helped": helped,
        "examples": [
            {
                "task_id": rf["task_id"],
                "middle": rf["middle"],
                "file-level": rf["completion_with_context"],
                "repository-level": rr["completion_with_context"],
            }
            for rf, rr in list(zip(file_level, repo_level, strict=True))[:4]
        ],
    }
    base = run / "eval" / "base.json"
    if base.is_file():
        out["base"] = {k: json.loads(base.read_text())[k] for k in (*VARIANTS, "context_gain")}
    return out


def run_experiment(out: str | os.PathLike, *, preset: str = "cpu", seed: int = 0) -> Path:
    """Run (or continue) the comparison into `out`; returns the report's path."""
    from .report import write_report

    if preset not in PRESETS:
        raise ValueError(f"--preset {preset}: choose one of {', '.join(PRESETS)}")
    p, run = PRESETS[preset], Path(out).resolve()
    run.mkdir(parents=True, exist_ok=True)
    timings_file = run / "timings.json"  # each step's time when it ran (a rerun skips it and keeps its time)
    timings = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
    settings = {"preset": preset, "seed": seed, **asdict(p)}
    saved = run / "settings.json"
    changed = changed_settings(json.loads(saved.read_text()), settings) if saved.is_file() else ""
    if changed:
        raise ValueError(f"{run} holds a run with other settings ({changed}); use another --out")
    write_json(saved, settings)
    data = run / "data"
    train, heldout = data / "train", data / "heldout"
    _step(
        "train repositories",
        train,
        lambda: write_repositories(train, seed, "train", p.train_repositories),
        timings,
        timings_file,
    )
    _step(
        "held-out",
        heldout,
        lambda: write_repositories(heldout, seed, "heldout", p.heldout_repositories),
        timings,
        timings_file,
    )
    base = run / "models" / "base"
    _step("base", base, lambda: build_base(p, base, seed), timings, timings_file)
    for arm in ARMS:
        folder = run / "models" / arm
        _step(f"train {arm}", folder / "lineage.json", lambda a=arm: train_arm(p, run, a, seed), timings, timings_file)
    models = {arm: run / "models" / arm for arm in ARMS} | ({"base": base} if p.evaluate_base else {})
    for name, folder in models.items():
        path = run / "eval" / f"{name}.json"
        _step(
            f"evaluate {name}",
            path,
            lambda n=name, f=folder, o=path: evaluate_model(p, run, n, f, o),
            timings,
            timings_file,
        )
    numbers = results(run, preset, seed)
    numbers["timings_s"] = timings
    return write_report(run, numbers)
