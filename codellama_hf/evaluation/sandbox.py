"""Run model-written programs contained, in parallel, and fast enough to score thousands of samples.

Trusted harnesses call their guard "not a security sandbox" and set no memory limit (evaluation.md §2, §7). Here
each program runs in its own process, created by a pre-started worker (sandbox_worker.py), with:

- its own session and work dir (also HOME and TMPDIR; a private size-limited tmpfs with namespaces), stdin,
  stdout and stderr on memory files, and only the first `output_bytes` of each coming back;
- a wall-clock timeout enforced by the worker, RLIMIT_CPU, RLIMIT_AS (memory), RLIMIT_FSIZE (files and output),
  RLIMIT_NOFILE, and a process cap (pids cgroup for root, RLIMIT_NPROC otherwise);
- a scrubbed environment (PATH, HOME, TMPDIR, LANG: no tokens or credentials);
- when the OS allows it (root): new pid and mount namespaces per program, in a network namespace per worker. The
  program is pid 1 of its namespace, so the kernel kills everything it started when it ends, daemons included; it
  sees only its own processes in /proc; the network namespace has no interface but a down loopback. Otherwise
  the worker is a child subreaper and kills whatever the program left behind;
- no capabilities (root keeps its uid but not its powers) and no new privileges;
- Landlock (Linux >= 5.13, unprivileged): writes only under the work dir; reads only in system and Python folders
  (so ~/.cache/huggingface/token and ssh keys stay unreadable); TCP bind/connect denied (ABI >= 4); signals and
  abstract unix sockets outside the sandbox denied (ABI >= 6).

`capabilities()` tells which layers this machine gave; results record it. What it is not: a defence against a
program that targets this harness to fake a pass (it could find the completion pipe). It contains; it does not
certify. Nothing runs unless the caller opts in (`allow_code_execution=True` or CODELLAMA_HF_ALLOW_CODE_EXECUTION=1).

Timeouts follow evalplus: `calibrated_timeout` = max(floor, factor x the reference solution's runtime), capped, so
a slow machine does not turn correct programs into timeouts.
"""

from __future__ import annotations

import json
import math
import os
import queue
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

ALLOW_ENV = "CODELLAMA_HF_ALLOW_CODE_EXECUTION"
WORKER_SCRIPT = Path(__file__).with_name("sandbox_worker.py")
PASSED, FAILED, TIMEOUT = "passed", "failed", "timeout"
SETUP_FAILED = 125  # the worker's exit code when containment itself could not be set up


@dataclass(frozen=True)
class Limits:
    """Per-program limits shared by a sandbox (a Program may raise memory_bytes, e.g. for the JVM)."""

    memory_bytes: int = 4 << 30  # evalplus' default address-space cap
    file_bytes: int = 16 << 20  # largest file (stdout/stderr included) a program may write
    open_files: int = 256
    processes: int = 64
    output_bytes: int = 64 << 10  # how much of stdout/stderr comes back in a Result
    disk_bytes: int = 256 << 20  # size of the private tmpfs work dir (namespaces only; memory-backed)


@dataclass(frozen=True)
class Program:
    """One program: Python `source` run as __main__, or a `command` run in the work dir (after writing `files`)."""

    source: str | None = None
    command: Sequence[str] = ()
    files: Mapping[str, str] = field(default_factory=dict)
    stdin: str = ""
    timeout: float = 10.0
    memory_bytes: int | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    readable: Sequence[str] = ()  # extra folders the program may read (e.g. a library's jar folder)

    def __post_init__(self):
        if (self.source is None) == (not self.command):
            raise ValueError("a Program needs exactly one of `source` (Python) or `command`")
        if not self.timeout > 0:
            raise ValueError(f"Program timeout must be > 0 seconds, got {self.timeout}")
        for name in self.files:
            path = Path(name)
            if path.is_absolute() or ".." in path.parts or not path.parts:
                raise ValueError(f"Program file name {name!r} must be a relative path inside the work dir")


@dataclass(frozen=True)
class Result:
    status: str  # "passed" | "failed" | "timeout"
    returncode: int | None
    stdout: str
    stderr: str
    duration: float
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status == PASSED


def calibrated_timeout(
    reference_seconds: float, *, floor: float = 3.0, factor: float = 4.0, cap: float = 60.0
) -> float:
    """evalplus' rule: max(floor, factor x reference runtime), capped per program."""
    return min(cap, max(floor, factor * reference_seconds))


def require_opt_in(allow_code_execution: bool) -> None:
    if not (allow_code_execution or os.environ.get(ALLOW_ENV) == "1"):
        raise RuntimeError(
            "refusing to execute model-written code: pass --allow-code-execution (CLI), allow_code_execution=True "
            f"(API) or set {ALLOW_ENV}=1, after reading codellama_hf/evaluation/sandbox.py"
        )


def _program_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The whole environment a program sees (the worker adds HOME and TMPDIR = its work dir)."""
    bin_dir = os.path.dirname(sys.executable)
    return {
        "PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "OMP_NUM_THREADS": "1",
        **extra,
    }


def _rmtree(path: Path) -> None:
    """Remove the sandbox root even if a program took its own permissions away."""

    def fix(func, target, _exc):
        os.chmod(os.path.dirname(target), stat.S_IRWXU)
        if os.path.isdir(target) and not os.path.islink(target):
            os.chmod(target, stat.S_IRWXU)
        func(target)

    shutil.rmtree(path, onerror=fix)


class _Worker:
    """One pre-started worker process and its pipes."""

    def __init__(self, limits: Limits, namespaces: bool, slot: Path):
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-E",
                "-s",
                str(WORKER_SCRIPT),
                str(limits.processes),
                "auto" if namespaces else "off",
                str(slot),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=_program_env({}),
            cwd=slot.parent,
            start_new_session=True,
        )
        ready = self._readline(60.0)
        if not ready:
            raise RuntimeError("the sandbox worker did not start (no ready line within 60 s)")
        self.capabilities = json.loads(ready)["ready"]

    def _readline(self, timeout: float) -> bytes:
        if not select.select([self.proc.stdout], [], [], timeout)[0]:
            return b""
        return self.proc.stdout.readline()

    def ask(self, job: dict, timeout: float) -> dict | None:
        self.proc.stdin.write(json.dumps(job).encode() + b"\n")
        self.proc.stdin.flush()
        line = self._readline(timeout)
        return json.loads(line) if line else None

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            pipe.close()


class Sandbox:
    """A pool of `workers` sandbox workers; `run(programs)` executes them in parallel. Use as a context manager."""

    def __init__(
        self,
        *,
        workers: int = 2,
        limits: Limits = Limits(),
        allow_code_execution: bool = False,
        namespaces: bool = True,
    ):
        require_opt_in(allow_code_execution)
        if sys.platform != "linux":
            raise RuntimeError(f"the sandbox needs Linux (namespaces, Landlock, /proc); this is {sys.platform}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.limits, self.namespaces = limits, namespaces
        self.root = Path(tempfile.mkdtemp(prefix="codellama_hf_sandbox-"))
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._all: list[_Worker] = []
        self._retired: list[_Worker] = []
        try:
            for _ in range(workers):
                self._add_worker()
        except BaseException:
            self.close()
            raise
        self.workers = workers

    def _add_worker(self) -> None:
        worker = _Worker(self.limits, self.namespaces, self.root / f"slot{len(self._all) + len(self._retired)}")
        self._all.append(worker)
        self._idle.put(worker)

    def capabilities(self) -> dict:
        """Which containment layers this machine gave: namespaces, landlock ABI, process cap."""
        caps = dict(self._all[0].capabilities)
        caps["process_cap"] = "cgroup" if caps.pop("cgroup") else "rlimit" if caps.pop("nproc") else "none"
        caps.pop("nproc", None)
        return caps

    def run(self, programs: Iterable[Program], *, progress: str | None = None) -> list[Result]:
        programs = list(programs)
        with ThreadPoolExecutor(self.workers) as pool:
            futures = [pool.submit(self._run_one, i, p) for i, p in enumerate(programs)]
            bar = tqdm(total=len(futures), desc=progress, disable=progress is None, unit="prog")
            results = []
            for future in futures:
                results.append(future.result())
                bar.update()
            bar.close()
        return results

    def _run_one(self, index: int, program: Program) -> Result:
        job = {
            "id": index,
            "timeout": program.timeout,
            "limits": {
                "cpu_seconds": math.ceil(program.timeout) + 1,
                "memory_bytes": program.memory_bytes or self.limits.memory_bytes,
                "file_bytes": self.limits.file_bytes,
                "open_files": self.limits.open_files,
                "disk_bytes": self.limits.disk_bytes,
            },
            "env": _program_env(program.env),
            "command": list(program.command),
            "source": program.source,
            "files": dict(program.files),
            "stdin": program.stdin,
            "readable": list(program.readable),
            "output_bytes": self.limits.output_bytes,
        }
        worker = self._idle.get()
        reply = worker.ask(job, program.timeout + 60.0)
        if reply is None:  # the worker itself died or hung: replace it, the harness goes on
            worker.close()
            self._all.remove(worker)
            self._retired.append(worker)
            self._add_worker()
            return Result(FAILED, None, "", "", program.timeout, "sandbox worker lost; program counted as failed")
        self._idle.put(worker)
        return _result(program, reply)

    def close(self) -> None:
        for worker in self._all:
            worker.close()
        self._all.clear()
        if self.root.exists():
            _rmtree(self.root)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _result(program: Program, reply: dict) -> Result:
    if "error" in reply:
        return Result(FAILED, None, "", "", 0.0, reply["error"])
    code, duration, stdout, stderr = reply["returncode"], reply["duration"], reply["stdout"], reply["stderr"]
    if not reply["setup"]:
        raise RuntimeError(f"the sandbox could not contain a program on this machine: {stderr.strip()[-2000:]}")
    if reply["timed_out"]:
        return Result(TIMEOUT, None, stdout, stderr, duration, f"wall-clock timeout after {program.timeout:g} s")
    if code < 0:
        name = signal.Signals(-code).name
        why = {"SIGXFSZ": " (file/output size limit)", "SIGXCPU": " (CPU time limit)"}.get(name, "")
        return Result(FAILED, code, stdout, stderr, duration, f"killed by {name}{why}")
    if code != 0:
        return Result(FAILED, code, stdout, stderr, duration, f"exit status {code}")
    if program.source is not None and not reply["completed"]:
        return Result(FAILED, code, stdout, stderr, duration, "exited before the end of the program")
    return Result(PASSED, 0, stdout, stderr, duration)


def run_programs(
    programs: Iterable[Program],
    *,
    workers: int = 2,
    allow_code_execution: bool = False,
    limits: Limits = Limits(),
    progress: str | None = None,
) -> list[Result]:
    """Run programs in a fresh Sandbox (see the module docstring); results in input order."""
    with Sandbox(workers=workers, limits=limits, allow_code_execution=allow_code_execution) as sandbox:
        return sandbox.run(programs, progress=progress)
