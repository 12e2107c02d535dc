"""The experiment's report: results.json, comparison.png and report.md (from report.md.j2) in DIR/report."""

from __future__ import annotations

from pathlib import Path

from codellama_hf.io import write_json, write_text

from .experiment import ARMS, VARIANTS

TEMPLATE = Path(__file__).with_name("report.md.j2")
LABELS = {"with_context": "with repository context", "without_context": "file alone"}


def plot(numbers: dict, path: Path) -> None:
    """Exact match (Wilson 95%) and middle loss (95% over tasks) per arm and prompt, and both training curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (em, loss, curve) = plt.subplots(1, 3, figsize=(14, 4))
    width = 0.38
    for i, variant in enumerate(VARIANTS):
        xs = [a + (i - 0.5) * width for a in range(len(ARMS))]
        cells = [numbers["arms"][arm][variant] for arm in ARMS]
        rates = [c["exact_match"]["rate"] for c in cells]
        em.bar(xs, rates, width, label=LABELS[variant], color=f"C{i}")
        em.errorbar(
            xs,
            rates,
            yerr=[
                [r - c["exact_match"]["low"] for r, c in zip(rates, cells, strict=True)],
                [c["exact_match"]["high"] - r for r, c in zip(rates, cells, strict=True)],
            ],
            fmt="none",
            ecolor="black",
            capsize=4,
        )
        means = [c["middle_loss"]["mean"] for c in cells]
        loss.bar(xs, means, width, label=LABELS[variant], color=f"C{i}")
        loss.errorbar(
            xs,
            means,
            yerr=[[m - c["middle_loss"]["low"] for m, c in zip(means, cells, strict=True)], [0] * len(cells)],
            fmt="none",
            ecolor="black",
            capsize=4,
        )
    for ax, label in ((em, "exact match (Wilson 95%)"), (loss, "middle loss, nats/token (95%)")):
        ax.set(xticks=range(len(ARMS)), xticklabels=[f"{a} FIM" for a in ARMS], ylabel=label)
        ax.legend(fontsize=8)
    em.set(ylim=(0, 1), title=f"cross-file infilling, {numbers['tasks']} held-out tasks")
    loss.set(title="loss of the true middle line")
    for arm in ARMS:
        c = numbers["training"][arm]["loss_curve"]
        curve.plot(c["steps"], c["loss"], marker=".", label=f"{arm} FIM")
    curve.set(title="training loss (same steps, same tokens/step)", xlabel="step", ylabel="loss")
    curve.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_report(run: Path, numbers: dict) -> Path:
    import jinja2

    folder = run / "report"
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "results.json", numbers)
    plot(numbers, folder / "comparison.png")
    template = jinja2.Template(TEMPLATE.read_text(encoding="utf-8"), keep_trailing_newline=True)
    text = template.render(
        n=numbers,
        arms=list(ARMS),
        variants=VARIANTS,
        labels=LABELS,
        command=f"python -m experiments.repository_fim --preset {numbers['preset']} --out {run} "
        f"--seed {numbers['seed']}",
    )
    return write_text(folder / "report.md", text)
