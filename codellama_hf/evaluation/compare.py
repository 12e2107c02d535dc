"""Two models' results side by side: infilling before and after a stage (e.g. instruct tuning), any shared task.

Each side is a results folder (`codellama-hf evaluate ... --out DIR` writes DIR/<model>/<task>.json). For pass@1,
the change comes with a 95% confidence interval: paired over the problems both sides scored when their per-sample
outcomes (`<task>.results.jsonl`) are there (the mean of per-problem differences, a normal interval; the same
problems usually make the interval tighter than two independent proportions would), otherwise unpaired (two binomial
proportions, Wald). An interval that contains 0 means the benchmark cannot tell the models apart at that size.

    codellama-hf evaluate compare eval_results/lcft eval_results/instruct   # infilling tasks in both
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from pathlib import Path

from codellama_hf.evaluation.report import load_results

Z95 = 1.959963984540054  # two-sided 95% normal quantile
INFILLING_PREFIX = "humaneval-infill-"


def per_problem_pass_rates(folder: Path, result: dict) -> dict[str, float] | None:
    """{task_id: share of that problem's samples that passed} from the result's per-sample outcomes, or None."""
    samples_file = result.get("samples_file")
    if not samples_file:
        return None
    path = folder / (Path(samples_file).stem.removesuffix(".samples") + ".results.jsonl")
    if not path.is_file():
        return None
    outcomes: dict[str, list[bool]] = defaultdict(list)
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                sample = json.loads(line)
                outcomes[sample["task_id"]].append(bool(sample["passed"]))
    return {task: sum(passed) / len(passed) for task, passed in outcomes.items()}


def paired_change(before: dict[str, float], after: dict[str, float]) -> dict:
    """Mean per-problem change over the shared problems with its 95% interval (normal approximation)."""
    shared = sorted(before.keys() & after.keys())
    if not shared:
        raise ValueError("the two results share no problem: compare runs of the same benchmark and problems")
    diffs = [after[t] - before[t] for t in shared]
    n, mean = len(diffs), sum(diffs) / len(diffs)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1)) if n > 1 else 0.0
    half = Z95 * sd / math.sqrt(n)
    return {
        "before": sum(before[t] for t in shared) / n,
        "after": sum(after[t] for t in shared) / n,
        "change": mean,
        "ci95": [mean - half, mean + half],
        "problems": n,
        "paired": True,
    }


def unpaired_change(before: float, n_before: int, after: float, n_after: int) -> dict:
    """Change of two independent proportions with a Wald 95% interval."""
    half = Z95 * math.sqrt(before * (1 - before) / max(n_before, 1) + after * (1 - after) / max(n_after, 1))
    change = after - before
    return {
        "before": before,
        "after": after,
        "change": change,
        "ci95": [change - half, change + half],
        "problems": min(n_before, n_after),
        "paired": False,
    }


def _by_task(folder: Path) -> dict[str, dict]:
    return {r["task"]: r for r in load_results(folder) if not r.get("skipped")}


def compare_results(before: str | os.PathLike, after: str | os.PathLike, tasks: list[str] | None = None) -> list[dict]:
    """One row per task (and metric) scored in both folders: before, after, change and its 95% interval.

    `tasks` defaults to the infilling tasks both folders hold; asking for a task one side lacks is an error."""
    before, after = Path(before), Path(after)
    left, right = _by_task(before), _by_task(after)
    if tasks is None:
        tasks = sorted(t for t in left.keys() & right.keys() if t.startswith(INFILLING_PREFIX))
        if not tasks:
            raise ValueError(
                f"{before} and {after} hold no infilling results in common; score both models first, e.g. "
                "`codellama-hf evaluate humaneval-infill-single --model M --format psm --allow-code-execution "
                "--out DIR` for each, or name the tasks to compare"
            )
    rows = []
    for task in tasks:
        missing = [str(folder) for folder, side in ((before, left), (after, right)) if task not in side]
        if missing:
            raise ValueError(f"task {task!r} has no (unskipped) result in {', '.join(missing)}")
        a, b = left[task], right[task]
        for metric in [m for m in a["metrics"] if m in b["metrics"]]:
            row = {"task": task, "metric": metric, "before_model": a["model"], "after_model": b["model"]}
            rates = (per_problem_pass_rates(before, a), per_problem_pass_rates(after, b))
            if metric == "pass@1" and rates[0] is not None and rates[1] is not None:
                row |= paired_change(*rates)
            elif metric == "pass@1":
                row |= unpaired_change(
                    a["metrics"][metric], a["num_problems"], b["metrics"][metric], b["num_problems"]
                )
            else:  # no interval for other metrics (pass@k, k > 1, is not a mean of independent outcomes)
                row |= {"before": a["metrics"][metric], "after": b["metrics"][metric], "ci95": None, "paired": None}
                row |= {"change": row["after"] - row["before"], "problems": min(a["num_problems"], b["num_problems"])}
            rows.append(row)
    return rows


def comparison_table(rows: list[dict]) -> str:
    """Markdown: one line per task and metric."""
    lines = [
        "| task | metric | before | after | change | 95% interval | problems | pairing |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ci = "-" if r["ci95"] is None else f"[{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}]"
        pairing = {True: "paired", False: "unpaired", None: "-"}[r["paired"]]
        lines.append(
            f"| {r['task']} | {r['metric']} | {r['before']:.3f} | {r['after']:.3f} | {r['change']:+.3f} | {ci} | "
            f"{r['problems']} | {pairing} |"
        )
    return "\n".join(lines)


def comparison_report(rows: list[dict], before: str | os.PathLike, after: str | os.PathLike) -> str:
    """The comparison as a short Markdown document (what each side is, the table, how to read the interval)."""
    models = rows[0]["before_model"], rows[0]["after_model"]
    return "\n".join(
        [
            "# Before / after",
            "",
            f"- before: `{models[0]}` (results in `{before}`)",
            f"- after: `{models[1]}` (results in `{after}`)",
            "",
            comparison_table(rows),
            "",
            "The interval is 95% for the change in pass@1: paired over the shared problems when both sides kept their",
            "per-sample outcomes, else two independent proportions. An interval containing 0: no measurable change.",
            "",
        ]
    )
