"""The sandbox's worker process: started once per parallel worker, it creates one contained process per program.

Run as a script with only the standard library (`python -E -s sandbox_worker.py`), never imported by the harness:
a small pre-started interpreter forks in about a millisecond, where starting Python per program costs 20-100 ms.
Protocol: one JSON job per line on stdin, one JSON result per line on stdout (see sandbox.py for the fields).

Where it may (root; an ordinary user through a user namespace), the worker first enters mount and network
namespaces of its own (no network), builds the
root view (sandbox_layers.build_root) and pivots into it; then per job it clones the program's process P straight
into new pid and mount namespaces: P is pid 1 of its pid namespace, so when it ends or is killed the kernel kills
every process it left behind, daemons included. The clone is a raw clone(2) that behaves like fork(2) (Python's
own fork hooks do not run in P, which only execs or runs one program and exits). Otherwise P is forked and the
worker, a child subreaper, kills whatever is reparented to it.
Inside P, before any program code runs: pids cgroup (root), its own tmpfs and /proc (namespaces), own session,
stdin/stdout/stderr on memory files (size-limited by RLIMIT_FSIZE), resource limits, the sandbox uid/gid (root) and
no capabilities, and a Landlock domain with no_new_privs. Python programs then run in P's interpreter, others are
exec'd. The worker restarts (the harness starts a new one) when a program declares a folder its view lacks.
"""

from __future__ import annotations

import gc
import glob
import json
import os
import resource
import select
import signal
import sys
import time
import traceback

from sandbox_layers import (
    DEVICES,
    ETC_KEEP,
    LIBC,
    PR_SET_CHILD_SUBREAPER,
    PR_SET_PDEATHSIG,
    SANDBOX_DIR,
    SECCOMP_ARCH,
    become,
    build_root,
    check,
    clone_into_namespaces,
    deny_unix_sockets,
    empty_bounding_set,
    enter_namespaces,
    landlock_abi,
    landlock_restrict,
    no_new_privs,
    pivot_into,
    program_mounts,
    sandbox_ids,
)


def pids_cgroup(name: str, max_processes: int) -> str | None:
    """A pids cgroup capping the program's process count: RLIMIT_NPROC does not bind root."""
    for base in ("/sys/fs/cgroup/pids", "/sys/fs/cgroup"):
        controllers = os.path.join(base, "cgroup.subtree_control")
        if base.endswith("/pids") and not os.path.exists(os.path.join(base, "cgroup.procs")):
            continue
        if not base.endswith("/pids") and (not os.path.exists(controllers) or "pids" not in open(controllers).read()):
            continue
        path = os.path.join(base, name)
        try:
            os.makedirs(path, exist_ok=True)
            with open(os.path.join(path, "pids.max"), "w") as handle:
                handle.write(str(max_processes))
            return path
        except OSError:
            continue
    return None


def _children(parent: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                kids.append(int(entry))
    return kids


def _kill_descendants() -> None:
    """Subreaper: kill and reap every process left to us (the program's orphans) until none is left."""
    children = f"/proc/self/task/{os.getpid()}/children"
    while True:
        try:
            kids = [int(k) for k in open(children).read().split()]
        except FileNotFoundError:  # a kernel without CONFIG_PROC_CHILDREN
            kids = _children(os.getpid())
        for kid in kids:
            try:
                os.kill(kid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            return
        if not kids:
            time.sleep(0.001)


def _tasks_on_system() -> int:
    return int(open("/proc/loadavg").read().split()[3].split("/")[1])


def _enter_program(job: dict, caps: dict, work: str, fds: tuple[int, int, int], marker_fd: int, nonce: bytes) -> None:
    """Runs in P: contain this process, then run the program. Never returns."""
    if caps["cgroup"]:  # through the folder's descriptor: with a root view its path is gone
        fd = os.open("cgroup.procs", os.O_WRONLY, dir_fd=caps["cgroup_fd"])
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
    ids = tuple(caps["ids"]) if caps["ids"] else None
    if caps["root"]:
        program_mounts(job["limits"]["disk_bytes"], ids or (0, 0))
    os.setsid()
    for fd, target in zip(fds, (0, 1, 2), strict=False):
        os.dup2(fd, target)
    os.closerange(3, marker_fd)
    os.closerange(marker_fd + 1, 1 << 16)
    limits = job["limits"]
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_seconds"], limits["cpu_seconds"] + 1))
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory_bytes"], limits["memory_bytes"]))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["file_bytes"], limits["file_bytes"]))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits["open_files"], limits["open_files"]))
    if caps["nproc"]:
        resource.setrlimit(resource.RLIMIT_NPROC, (caps["nproc"], caps["nproc"]))
    become(ids)
    if caps["root"]:  # the program's own tmpfs: work dir (also HOME), /tmp and /dev/shm
        for name in ("work", "tmp", "shm"):
            os.mkdir(f"{SANDBOX_DIR}/{name}", 0o700)
        env = {**job["env"], "HOME": work, "TMPDIR": "/tmp"}
    else:
        env = {**job["env"], "HOME": work, "TMPDIR": work}
    os.chdir(work)
    for name, text in job["files"].items():
        os.makedirs(os.path.dirname(name) or ".", exist_ok=True)
        with open(name, "w", encoding="utf-8") as handle:
            handle.write(text)
    if caps["landlock"]:
        writable = [SANDBOX_DIR] if caps["root"] else [work]
        readable = ["/"] if caps["root"] else caps["readable"] + job["readable"]
        landlock_restrict(caps["landlock"], writable, readable, [f"/dev/{name}" for name in DEVICES])
    else:
        no_new_privs()
    if caps["seccomp"]:
        deny_unix_sockets()
    os.environ.clear()
    os.environ.update(env)
    os.write(marker_fd, b"s")  # contained: from here on, failures are the program's
    if job["command"]:
        for sig in (signal.SIGPIPE, signal.SIGXFSZ):  # Python ignores these; programs it execs must not
            signal.signal(sig, signal.SIG_DFL)
        os.execvpe(job["command"][0], job["command"], env)
    _run_python(job["source"], work, marker_fd, nonce)


def _run_python(
    source: str, work: str, marker_fd: int, nonce: bytes, *, _exit=os._exit, _write=os.write, _base=BaseException
) -> None:
    """Run Python source as __main__ in this (already contained) interpreter; mark completion, then exit.

    Only a program that runs to its last line passes: sys.exit(0), os._exit(0), exit codes forced from atexit or
    excepthook, and patches of os, sys or builtins made by the program do not reach the completion mark, whose
    writer and exit were bound before the program ran (a program that hunts for the mark's pipe can still forge
    it: the sandbox contains, it does not certify). The mark is a fresh random nonce per job, so writing bytes
    to every open descriptor does not forge it."""
    import types

    sys.stdin = open(0, closefd=False)
    sys.argv = [os.path.join(work, "main.py")]
    sys.path[0] = work
    module = types.ModuleType("__main__")  # `import __main__` and pickle see the program, not this worker
    module.__file__ = sys.argv[0]
    sys.modules["__main__"] = module
    try:
        exec(compile(source, sys.argv[0], "exec"), module.__dict__)
        sys.stdout.flush()
        sys.stderr.flush()
    except _base as err:  # SystemExit included: a program that exits early has not run its tests
        try:
            traceback.print_exception(type(err), err, err.__traceback__.tb_next)  # from the program's first frame
            sys.stderr.flush()
        finally:
            _exit(1)
    _write(marker_fd, nonce)
    _exit(0)


def _memory_file(name: str, text: str = "") -> int:
    fd = os.memfd_create(name, 0)
    if text:
        os.write(fd, text.encode())
        os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _read_capped(fd: int, limit: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    data = os.read(fd, limit + 1)
    os.close(fd)
    return data[:limit].decode("utf-8", errors="replace") + ("\n[... output truncated]" if len(data) > limit else "")


def run_job(job: dict, caps: dict, slot: str) -> dict:
    """Create P for one job, enforce its wall timeout, make sure nothing of it survives, and report."""
    fds = (_memory_file("stdin", job["stdin"]), _memory_file("stdout"), _memory_file("stderr"))
    if caps["root"]:
        work = f"{SANDBOX_DIR}/work"
    else:
        work = os.path.join(slot, f"job{job['id']}")
        os.mkdir(work, 0o700)
        if caps["ids"]:
            os.chown(work, *caps["ids"])
    marker_r, marker_w = os.pipe()
    nonce = os.urandom(16)
    start = time.monotonic()
    pid = clone_into_namespaces() if caps["namespaces"] else os.fork()
    if pid == 0:
        try:
            LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            os.close(marker_r)
            _enter_program(job, caps, work, fds, marker_w, nonce)
        except BaseException as err:  # setup failed: say why on the program's stderr
            os.write(fds[2], f"sandbox setup failed: {err!r}\n".encode())
        finally:
            os._exit(125)
    check(pid, "clone")
    os.close(marker_w)
    os.close(fds[0])
    pidfd = os.pidfd_open(pid)
    timed_out = not select.select([pidfd], [], [], job["timeout"])[0]
    if timed_out:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    duration = time.monotonic() - start
    os.close(pidfd)
    if not caps["namespaces"]:  # with namespaces P was pid 1: the kernel has killed everything else in it
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _kill_descendants()
        _rmtree(work)
    marks = _read_all(marker_r)
    return {
        "id": job["id"],
        "timed_out": timed_out,
        "returncode": os.waitstatus_to_exitcode(status),
        "setup": marks[:1] == b"s",
        "completed": marks == b"s" + nonce and not timed_out,
        "tampered": marks not in (b"", b"s", b"s" + nonce),  # the program wrote to the completion pipe
        "duration": duration,
        "stdout": _read_capped(fds[1], job["output_bytes"]),
        "stderr": _read_capped(fds[2], job["output_bytes"]),
    }


def _read_all(fd: int) -> bytes:
    """Everything in a pipe whose writers are gone (the setup mark and the nonce, unless the program wrote too)."""
    os.set_blocking(fd, False)
    data = b""
    try:
        while chunk := os.read(fd, 64):
            data += chunk
    except BlockingIOError:
        pass
    os.close(fd)
    return data


def _rmtree(path: str) -> None:
    """Remove a job folder even if the program took its own permissions away."""
    import shutil

    def fix(func, target, _exc):
        os.chmod(os.path.dirname(target), 0o700)
        if os.path.isdir(target) and not os.path.islink(target):
            os.chmod(target, 0o700)
        func(target)

    shutil.rmtree(path, onerror=fix)


def _python_folders() -> list[str]:
    """The interpreter's installation (stdlib, site-packages); not this script's folder nor editable checkouts."""
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    return [p for p in prefixes if p and os.path.isdir(p)]


def _fallback_readable() -> list[str]:
    """What a program may read without a root view (Landlock rules): system and Python folders, the /etc files of
    the root view, /proc (other processes' environments and memory stay closed: Landlock's ptrace rules), and of
    /dev only the devices of the root view (a root program reads the raw disk otherwise)."""
    system = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/sys/devices/system"]
    etc = [path for pattern in ETC_KEEP for path in glob.glob("/etc/" + pattern)] + ["/etc/passwd", "/etc/group"]
    return sorted({p for p in system + etc + _python_folders() if os.path.exists(p)})


def _reachable_by(ids: tuple[int, int], folders: list[str]) -> bool:
    """Whether the sandbox uid can read these folders with the host's own permissions (fallback only)."""
    pid = os.fork()
    if pid == 0:
        try:
            become(ids)
            os._exit(0 if all(os.access(f, os.R_OK | os.X_OK) for f in folders) else 1)
        finally:
            os._exit(1)
    return os.waitpid(pid, 0)[1] == 0


def main() -> None:
    max_processes, namespaces, slot = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    toolchains = json.loads(sys.argv[4])  # folders programs declared readable (the harness restarts for more)
    os.makedirs(slot, mode=0o700, exist_ok=True)
    ids = sandbox_ids()
    cgroup = pids_cgroup(f"codellama_hf_sandbox.{os.getpid()}", max_processes) if os.geteuid() == 0 else None
    userns = namespaces == "user" or (namespaces == "auto" and os.geteuid() != 0)
    in_namespaces = namespaces != "off" and enter_namespaces(userns)
    if namespaces == "auto" and not in_namespaces and not userns:  # root without CAP_SYS_ADMIN: a user namespace
        userns = True
        in_namespaces = enter_namespaces(True)
    empty_bounding_set()  # after a user namespace, whose creator starts with a full bounding set in it
    if in_namespaces and userns:
        ids = None  # only the caller's own id is mapped: programs keep it, without capabilities
    if ids and not in_namespaces and not _reachable_by(ids, _python_folders()):
        ids = None  # e.g. a pyenv under /root (0700): the program would find no standard library
    caps = {
        "namespaces": in_namespaces,
        "userns": in_namespaces and userns,
        "root": None,
        "bound": [],
        "ids": ids,
        "landlock": landlock_abi(),
        "cgroup": cgroup,
        # RLIMIT_NPROC counts all processes (threads included) of the real uid: the sandbox's own uid runs only
        # this worker's program; a caller's uid also runs everything else it has.
        "nproc": max_processes if ids else _tasks_on_system() + max_processes,
        "readable": [] if in_namespaces else _fallback_readable(),
        "seccomp": not in_namespaces and SECCOMP_ARCH is not None,  # the root view hides host sockets instead
    }
    if in_namespaces:
        caps["root"] = os.path.join(slot, "root")
        os.mkdir(caps["root"], 0o755)
        caps["bound"] = build_root(caps["root"], _python_folders() + toolchains, ids or (0, 0), caps["userns"])
    elif ids:  # the sandbox uid must reach its job folders
        os.chmod(slot, 0o711)
    if caps["cgroup"]:
        caps["cgroup_fd"] = os.open(caps["cgroup"], os.O_DIRECTORY)
        caps["cgroup_parent_fd"] = os.open(os.path.dirname(caps["cgroup"]), os.O_DIRECTORY)
    if caps["root"]:
        pivot_into(caps["root"])
        caps["root"] = "/"
    gc.freeze()  # keep the interpreter's objects out of every fork's collections: fewer copied pages
    ready = {k: caps[k] for k in ("namespaces", "userns", "landlock", "cgroup", "nproc", "ids", "bound", "seccomp")}
    print(json.dumps({"ready": ready}), flush=True)
    if not caps["namespaces"]:
        LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    try:
        for line in sys.stdin:
            sys.stdout.write(json.dumps(run_job(json.loads(line), caps, slot)) + "\n")
            sys.stdout.flush()
    finally:
        if caps["cgroup"]:
            try:
                os.rmdir(os.path.basename(caps["cgroup"]), dir_fd=caps["cgroup_parent_fd"])
            except OSError:
                pass


if __name__ == "__main__":
    main()
