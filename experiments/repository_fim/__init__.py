"""Repository-level FIM against file-level FIM on cross-file infilling (issue 20), same base and same budget.

    python -m experiments.repository_fim --preset cpu --out DIR [--seed N]

Writes DIR/report/report.md, results.json and comparison.png (experiment.py says what is trained and measured).
The committed `cpu` run's report is in results/.
"""
