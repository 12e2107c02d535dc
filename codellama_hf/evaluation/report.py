"""Results files (one JSON per model and task), the per-model report (Markdown table + PNG plots).

Results schema, version "codellama_hf.eval/1" (model cards read these; add fields, never rename them):

    {
      "schema": "codellama_hf.eval/1",
      "task": "humaneval" | "mbpp" | "multiple-cpp" | "humaneval-infill-single-psm" | "key-retrieval" |
              "cross-file-psm" | ...,
      "model": "<folder or Hub id>" | "samples:<file>" (scored without a model),
      "created": "<UTC ISO time>",
      "metrics": {"pass@1": 0.0, "pass@10": ...} | {"accuracy": ...} | {"perplexity@4096": ...},
      "skipped": null | "<why the task could not run here, e.g. a missing toolchain>",
      "num_problems": <problems scored>, "total_problems": <problems in the benchmark>, "num_samples": <int>,
      "config": {generation and scoring settings: n_samples, do_sample, temperature, top_p, max_new_tokens,
                 infill_format, timeouts, limit, backend {backend, name, ...},
                 prompt {form: "strip"|"unstripped", requested, style: "completion"|"chat", benchmark_default,
                         token_boundary {form: "k/n"}}, ...},
      "failures": {cause: count of failed samples} (cause: exception type, "Timeout", "CompileError", ...),
      "generation": {"finish_reasons": {"stop"|"eos"|"length": count}, "cut_by_token_cap": int, "empty": int},
      "sandbox": {"namespaces": bool, "landlock": <ABI>, "process_cap": "cgroup" | "rlimit" | "none",
                  "identity", "filesystem", "network", "unix_sockets": <words>, "not_guaranteed": [<gap>, ...]},
      "details": {task-specific: key retrieval `by_length_depth` and `records`, perplexity `perplexity` by length},
      "samples_file": "<file name of the samples JSONL beside it>" | null,
      "versions": {"codellama_hf": ..., "transformers": ..., "torch": ...}
    }
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

from codellama_hf.io import write_json, write_text

SCHEMA = "codellama_hf.eval/1"


def new_result(task: str, model: str, **fields) -> dict:
    import torch
    import transformers

    import codellama_hf

    result = {
        "schema": SCHEMA,
        "task": task,
        "model": model,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "metrics": {},
        "skipped": None,
        "num_problems": 0,
        "total_problems": 0,
        "num_samples": 0,
        "config": {},
        "sandbox": {},
        "details": {},
        "failures": {},
        "generation": {},
        "samples_file": None,
        "versions": {
            "codellama_hf": codellama_hf.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        },
    }
    unknown = set(fields) - set(result)
    if unknown:
        raise ValueError(f"unknown result fields {sorted(unknown)}")
    result.update(fields)
    return result


def write_result(folder: str | os.PathLike, result: dict, *, name: str | None = None) -> Path:
    """Write folder/<name or task>.json atomically."""
    return write_json(Path(folder) / f"{name or result['task']}.json", result)


def load_results(folder: str | os.PathLike) -> list[dict]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such results folder")
    results = []
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not a results file ({err})") from None
        if isinstance(data, dict) and data.get("schema") == SCHEMA:
            results.append(data)
    return results


def prompt_protocol(result: dict) -> str:
    """How the prompts were given ("strip, completion"), or "" for results without prompts."""
    prompt = (result.get("config") or {}).get("prompt") or {}
    return ", ".join(str(prompt[k]) for k in ("form", "style") if prompt.get(k))


def table(results: list[dict]) -> str:
    """A Markdown table: one row per task and metric."""
    lines = ["| task | metric | value | problems | samples | prompt | note |", "|---|---|---|---|---|---|---|"]
    for r in results:
        if r["skipped"]:
            lines.append(f"| {r['task']} | - | - | - | - | - | skipped: {r['skipped']} |")
            continue
        notes = [] if r["num_problems"] == r["total_problems"] else [f"subset of {r['total_problems']}"]
        cut = (r.get("generation") or {}).get("cut_by_token_cap")
        if cut:
            notes.append(f"{cut} cut by the token cap")
        for metric, value in r["metrics"].items():
            shown = f"{value:.4f}" if isinstance(value, float) else str(value)
            lines.append(
                f"| {r['task']} | {metric} | {shown} | {r['num_problems']} | {r['num_samples']} | "
                f"{prompt_protocol(r)} | {'; '.join(notes)} |"
            )
    return "\n".join(lines)


def failures_table(results: list[dict]) -> str:
    """Failed samples grouped by cause, per task ("" when nothing failed)."""
    rows = [(r["task"], cause, count) for r in results for cause, count in (r.get("failures") or {}).items()]
    if not rows:
        return ""
    lines = ["| task | cause | failed samples |", "|---|---|---|"]
    lines += [f"| {task} | {cause} | {count} |" for task, cause, count in rows]
    return "\n".join(lines)


def _plot_perplexity(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ppl = result["details"]["perplexity"]
    lengths = sorted(int(k) for k in ppl)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(lengths, [ppl[str(k)] for k in lengths], marker="o")
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [str(n) for n in lengths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("perplexity")
    ax.set_title(f"Perplexity vs context length\n{result['model']}", fontsize=9)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_key_retrieval(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    details = result["details"]
    lengths, depths = details["lengths"], details["depths"]
    grid = np.array([[details["by_length_depth"][f"{n}@{d:g}"] for n in lengths] for d in depths])
    fig, ax = plt.subplots(figsize=(1.2 * len(lengths) + 3, 0.6 * len(depths) + 2.5))
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths])
    ax.set_xlabel("prompt length (tokens)")
    ax.set_ylabel("key depth")
    for (i, j), value in np.ndenumerate(grid):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="w" if value < 0.6 else "k")
    fig.colorbar(image, ax=ax, label="accuracy")
    ax.set_title(f"Key retrieval accuracy\n{result['model']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


PLOTS = {"perplexity": _plot_perplexity, "key-retrieval": _plot_key_retrieval}


def write_report(folder: str | os.PathLike) -> Path:
    """report.md (table of every result in `folder`) plus one PNG per long-context result."""
    folder = Path(folder)
    results = load_results(folder)
    if not results:
        raise ValueError(f"{folder}: no results files ({SCHEMA}) to report on")
    models = sorted({r["model"] for r in results})
    from codellama_hf.evaluation.sandbox import sandbox_note

    parts = [f"# Evaluation report: {', '.join(models)}", "", table(results), "", sandbox_note(results), ""]
    failures = failures_table(results)
    if failures:
        parts += [
            "## Why programs failed",
            "",
            "Per task, failed samples by cause (the exception type of the traceback's last line; each sample's",
            "stderr tail is in `<task>.results.jsonl`).",
            "",
            failures,
            "",
        ]
    for r in results:
        plot = PLOTS.get(r["task"])
        if plot and not r["skipped"]:
            image = folder / f"{r['task']}.png"
            plot(r, image)
            parts += [f"![{r['task']}]({image.name})", ""]
    return write_text(folder / "report.md", "\n".join(parts))
