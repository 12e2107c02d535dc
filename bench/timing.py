"""Timing shared by the bench scripts: the best of several runs (machines are noisy; the minimum is the signal)."""

import time


def best_of(repeats: int, fn):
    """(fastest wall time in seconds, result of the last run) of `fn()` over `repeats` runs."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result
