"""The miniature's report: claims.json (measured numbers only, deterministic given the seed), PNGs, and report.md
rendered from report.md.j2."""

from __future__ import annotations

import json
from pathlib import Path

from codellama_hf.io import write_json, write_text

from .presets import PRETRAIN, PYTHON_BRANCH
from .run import Run

TEMPLATE = Path(__file__).with_name("report.md.j2")


LOSS_CURVE_MODELS = (PRETRAIN, "code", "code-nofim", PYTHON_BRANCH, "python", "lcft", "instruct")


def _read(run: Run, name: str) -> dict:
    return json.loads(run.path("eval", f"{name}.json").read_text())


def quick_eval_curves(run: Run) -> dict:
    """Each stage's quick evaluations as series over its steps, from the quick_evaluations.json the stage's
    QuickEvalCallback wrote (stages run without them are left out)."""
    from codellama_hf.evaluation.during_training import read_quick_evaluations

    curves = {}
    for name in LOSS_CURVE_MODELS:
        found = read_quick_evaluations(run.model(name))
        if not found or not found["history"]:
            continue
        history = found["history"]
        metrics = sorted({k for h in history for k in h["metrics"]})
        curves[name] = {
            "steps": [h["step"] for h in history],
            "metrics": {k: [h["metrics"].get(k) for h in history] for k in metrics},
            "failures": found["failures"],
        }
    return curves


def plot_quick_eval_curves(curves: dict, path: Path) -> bool:
    """Infilling exact match, middle loss and perplexity against the step, one line per stage; False if none."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not curves:
        return False
    lengths = sorted(
        {int(k.split("@")[1]) for c in curves.values() for k in c["metrics"] if k.startswith("perplexity@")}
    )
    panels = [
        ("infill_exact_match_with_context", "infill_exact_match_without_context", "cross-file infilling exact match"),
        ("infill_middle_loss_with_context", "infill_middle_loss_without_context", "middle loss (nats/token)"),
        *((f"perplexity@{n}", None, f"perplexity at {n} tokens") for n in lengths),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5), squeeze=False)
    for ax, (solid, dashed, title) in zip(axes[0], panels, strict=True):
        for i, (name, curve) in enumerate(curves.items()):
            for key, style in ((solid, "-"), (dashed, "--")):
                values = curve["metrics"].get(key) if key else None
                if values and any(v is not None for v in values):
                    label = name if style == "-" else None
                    ax.plot(curve["steps"], values, style, marker=".", color=f"C{i}", label=label)
        ax.set(title=title, xlabel="step within the stage")
    axes[0][0].legend(fontsize=7, title="solid: with repository\ndashed: file alone", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


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
        "6_quick_eval_curves": quick_eval_curves(run),
        "7_instruct_keeps_infilling": instruct_infilling(run),
    }


def instruct_infilling(run: Run) -> dict:
    """Infilling of the LCFT model (before instruct tuning) and of the instruct model (after), on the same examples:
    the change in exact match with a paired 95% interval (evaluation/compare.py). Held when no format loses
    infilling beyond noise (the interval's upper end is at least 0) and some line was infilled at all."""
    from codellama_hf.evaluation.compare import paired_change, unpaired_change

    before, after = _read(run, "infill_before_instruct"), _read(run, "infill_instruct")
    lineage = json.loads((run.model("instruct") / "lineage.json").read_text())
    exact = {}
    for fmt in ("psm", "spm"):
        a, b = before[fmt], after[fmt]
        if "per_example" in a and "per_example" in b:
            change = paired_change(
                dict(enumerate(map(float, a["per_example"]))), dict(enumerate(map(float, b["per_example"])))
            )
        else:  # measured before the per-example outcomes were kept
            change = unpaired_change(a["exact_match"], a["examples"], b["exact_match"], b["examples"])
        exact[fmt] = {k: change[k] for k in ("before", "after", "change", "ci95", "paired")}
    measurable = any(exact[f]["before"] > 0 or exact[f]["after"] > 0 for f in exact)
    return {
        "exact_match": exact,
        "middle_loss": {f: {"before": before[f]["middle_loss"], "after": after[f]["middle_loss"]} for f in exact},
        "examples": before["psm"]["examples"],
        "instruct_fim": lineage["data"].get("fim"),  # the rate and components the instruct stage used
        "measurable": measurable,
        "held": measurable and all(exact[f]["ci95"][1] >= 0 for f in exact),
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
    if plot_quick_eval_curves(numbers["6_quick_eval_curves"], folder / "quick_eval_curves.png"):
        files["quick_eval"] = "quick_eval_curves.png"
    return files


def write_report(run: Run) -> None:
    """claims.json, the PNGs and report.md (from report.md.j2) in DIR/report, plus the steps' timings."""
    import jinja2

    from .pipeline import TOY_PROBLEMS

    folder = run.path("report")
    folder.mkdir(parents=True, exist_ok=True)
    numbers = claims(run)
    write_json(folder / "claims.json", numbers)
    plots = _plots(run, numbers, folder)
    c3 = numbers["3_lcft_lowers_long_context_perplexity"]
    selfinstruct = json.loads(run.path("selfinstruct", "summary.json").read_text())
    template = jinja2.Template(TEMPLATE.read_text(encoding="utf-8"), keep_trailing_newline=True)
    text = template.render(
        preset=run.preset_name,
        seed=run.seed,
        command=run.command(),
        eval_dir=run.path("eval"),
        report_dir=run.path("report"),
        meta_dir=run.path("meta"),
        init_dir=run.model("init"),
        stages=run.preset.stages,
        c1=numbers["1_fim_costs_little_left_to_right"],
        c2=numbers["2_fim_gives_infilling"],
        c3=c3,
        c4=numbers["4_python_stage_lowers_python_loss"],
        quick=numbers["6_quick_eval_curves"],
        c7=numbers["7_instruct_keeps_infilling"],
        lengths=sorted(c3["perplexity_code"], key=int),
        plots=plots,
        selfinstruct=selfinstruct,
        outcomes=", ".join(f"{k.replace('_', ' ')} {v}" for k, v in selfinstruct["solutions"].items() if v),
        toy_problems=len(TOY_PROBLEMS),
        family=json.loads(run.path("hub", "family.json").read_text()),
    )
    write_text(folder / "report.md", text)
    write_json(folder / "timings.json", run.timings)
