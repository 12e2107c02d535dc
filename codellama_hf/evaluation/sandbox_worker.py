"""The sandbox's worker process: started once per parallel worker, it creates one contained process per program.

Run as a script with only the standard library (`python -E -s sandbox_worker.py`), never imported by the harness:
a small pre-started interpreter forks in about a millisecond, where starting Python per program costs 20-100 ms.
Protocol: one JSON job per line on stdin, one JSON result per line on stdout (see sandbox.py for the fields).

Per job the worker creates the program's process P and supervises it (wall timeout, then cleanup). Where it may
(root), the worker enters a network namespace of its own (no network) and clones P straight into new pid and
mount namespaces: P is pid 1 of its pid namespace, so when it ends or is killed the kernel kills every process it
left behind, daemons included. The clone is a raw
clone(2) that behaves like fork(2) (Python's own fork hooks do not run in P, which only execs or runs one program
and exits). Otherwise P is forked and the worker, a child subreaper, kills whatever is reparented to it.
Inside P, before any program code runs: its own /proc and a size-limited tmpfs work dir (namespaces), pids cgroup
(root), own session, stdin/stdout/stderr on memory files (size-limited by RLIMIT_FSIZE), resource limits, no
capabilities, no new privileges, and a Landlock domain (writes only in the work dir, reads only in system and
Python folders, no TCP, no signals or abstract sockets outside the domain). Python programs then run in P's
interpreter, others are exec'd.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import resource
import select
import signal
import sys
import time
import traceback

LIBC = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x20000000, 0x40000000
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 24, 36, 38
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 2, 4, 8, 0x4000, 1 << 18

# Landlock (linux/landlock.h); the three syscalls have the same numbers on every architecture.
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
LANDLOCK_CREATE_RULESET_VERSION, LANDLOCK_RULE_PATH_BENEATH, LANDLOCK_RULE_NET_PORT = 1, 1, 2
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1, 2, 4, 8
FS_WRITES_V1 = sum(1 << bit for bit in range(4, 13))  # remove dir/file, make char/dir/reg/sock/fifo/block/sym
FS_REFER, FS_TRUNCATE, FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
NET_BIND_TCP, NET_CONNECT_TCP = 1, 2
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1, 2
READ = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def landlock_abi() -> int:
    return max(0, LIBC.syscall(SYS_LANDLOCK_CREATE_RULESET, None, 0, LANDLOCK_CREATE_RULESET_VERSION))


def _fs_rights(abi: int) -> int:
    rights = READ | FS_WRITE_FILE | FS_WRITES_V1
    if abi >= 2:
        rights |= FS_REFER
    if abi >= 3:
        rights |= FS_TRUNCATE
    if abi >= 5:
        rights |= FS_IOCTL_DEV
    return rights


def landlock_restrict(abi: int, writable: list[str], readable: list[str], device_files: list[str]) -> None:
    """Confine this process and all its future children (cannot be undone)."""
    handled = _fs_rights(abi)
    attr = _RulesetAttr(
        handled,
        NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0,
        SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0,
    )
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = _check(LIBC.syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), size, 0), "landlock ruleset")
    file_rights = handled & (FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV)
    rules = [(p, handled) for p in writable] + [(p, READ) for p in readable]
    rules += [(p, file_rights & ~FS_EXECUTE) for p in device_files]
    for path, rights in rules:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue  # a listed folder this system does not have
        beneath = _PathBeneath(rights if os.path.isdir(path) else rights & file_rights, fd)
        _check(
            LIBC.syscall(SYS_LANDLOCK_ADD_RULE, ruleset, LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(beneath), 0),
            f"landlock rule for {path}",
        )
        os.close(fd)
    _check(LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    _check(LIBC.syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0), "landlock restrict")
    os.close(ruleset)


def drop_capabilities() -> None:
    """Root keeps its uid (its files stay readable) but loses every capability, for good."""
    last = int(open("/proc/sys/kernel/cap_last_cap").read())
    for cap in range(last + 1):
        LIBC.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()  # effective/permitted/inheritable x 2 words, all zero
    _check(LIBC.capset(header, data), "capset")


SYS_CLONE = {"x86_64": 56, "aarch64": 220}.get(os.uname().machine)


def clone_into_namespaces() -> int:
    """fork(2) with new pid and mount namespaces for the child (-1 with errno set when not allowed)."""
    return LIBC.syscall(SYS_CLONE, CLONE_NEWPID | CLONE_NEWNS | signal.SIGCHLD, None, None, None, None)


def enter_namespaces() -> bool:
    """Move this worker into a network namespace of its own (no interface but a down loopback), which every program
    it starts shares, and check that it may clone programs into new pid and mount namespaces (root, in practice).
    One network namespace per worker: creating one per program would cost milliseconds each."""
    if SYS_CLONE is None or LIBC.unshare(CLONE_NEWNET) != 0:
        return False
    pid = clone_into_namespaces()
    if pid == 0:
        os._exit(0)
    return pid > 0 and os.waitpid(pid, 0)[1] == 0


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


def _enter_program(job: dict, caps: dict, work: str, fds: tuple[int, int, int], marker_fd: int) -> None:
    """Runs in P: contain this process, then run the program. Never returns."""
    if caps["namespaces"]:
        _check(LIBC.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "make mounts private")
        _check(LIBC.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None), "mount /proc")
        size = f"size={job['limits']['disk_bytes']},mode=0700".encode()
        _check(LIBC.mount(b"tmpfs", work.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, size), "mount tmpfs")
    if caps["cgroup"]:
        with open(os.path.join(caps["cgroup"], "cgroup.procs"), "w") as handle:
            handle.write(str(os.getpid()))
    os.setsid()
    os.chdir(work)
    for name, text in job["files"].items():
        os.makedirs(os.path.dirname(name) or ".", exist_ok=True)
        with open(name, "w", encoding="utf-8") as handle:
            handle.write(text)
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
    if os.geteuid() == 0:
        drop_capabilities()
    if caps["landlock"]:
        landlock_restrict(caps["landlock"], [work], caps["readable"] + job["readable"], ["/dev/null", "/dev/zero"])
    env = {**job["env"], "HOME": work, "TMPDIR": work}
    os.environ.clear()
    os.environ.update(env)
    os.write(marker_fd, b"s")  # contained: from here on, failures are the program's
    if job["command"]:
        for sig in (signal.SIGPIPE, signal.SIGXFSZ):  # Python ignores these; programs it execs must not
            signal.signal(sig, signal.SIG_DFL)
        os.execvpe(job["command"][0], job["command"], env)
    _run_python(job["source"], work, marker_fd)


def _run_python(source: str, work: str, marker_fd: int) -> None:
    """Run Python source as __main__ in this (already contained) interpreter; mark completion, then exit."""
    sys.stdin = open(0, closefd=False)
    sys.argv = [os.path.join(work, "main.py")]
    sys.path[0] = work
    namespace = {"__name__": "__main__", "__file__": sys.argv[0], "__builtins__": __builtins__}
    try:
        exec(compile(source, sys.argv[0], "exec"), namespace)
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException as err:  # SystemExit included: a program that exits early has not run its tests
        traceback.print_exception(type(err), err, err.__traceback__.tb_next)  # from the program's first frame
        sys.stderr.flush()
        os._exit(1)
    os.write(marker_fd, b"1")
    os._exit(0)


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
    work = slot if caps["namespaces"] else os.path.join(slot, f"job{job['id']}")
    if not caps["namespaces"]:
        os.mkdir(work, 0o700)
    marker_r, marker_w = os.pipe()
    start = time.monotonic()
    pid = clone_into_namespaces() if caps["namespaces"] else os.fork()
    if pid == 0:
        try:
            LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            os.close(marker_r)
            _enter_program(job, caps, work, fds, marker_w)
        except BaseException as err:  # setup failed: say why on the program's stderr
            os.write(fds[2], f"sandbox setup failed: {err!r}\n".encode())
            os._exit(125)
    _check(pid, "clone")
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
    os.set_blocking(marker_r, False)
    try:
        marks = os.read(marker_r, 2)
    except BlockingIOError:
        marks = b""
    os.close(marker_r)
    return {
        "id": job["id"],
        "timed_out": timed_out,
        "returncode": os.waitstatus_to_exitcode(status),
        "setup": marks[:1] == b"s",
        "completed": marks == b"s1" and not timed_out,
        "duration": duration,
        "stdout": _read_capped(fds[1], job["output_bytes"]),
        "stderr": _read_capped(fds[2], job["output_bytes"]),
    }


def _rmtree(path: str) -> None:
    """Remove a job folder even if the program took its own permissions away."""
    import shutil

    def fix(func, target, _exc):
        os.chmod(os.path.dirname(target), 0o700)
        if os.path.isdir(target) and not os.path.islink(target):
            os.chmod(target, 0o700)
        func(target)

    shutil.rmtree(path, onerror=fix)


def main() -> None:
    max_processes, namespaces, slot = int(sys.argv[1]), sys.argv[2] == "auto", sys.argv[3]
    caps = {
        "namespaces": namespaces and enter_namespaces(),
        "landlock": landlock_abi(),
        "cgroup": pids_cgroup(f"codellama_hf_sandbox.{os.getpid()}", max_processes) if os.geteuid() == 0 else None,
        # RLIMIT_NPROC counts all of the user's processes (threads included), so allow what runs already.
        "nproc": None if os.geteuid() == 0 else _tasks_on_system() + max_processes,
        "readable": sorted(
            {
                p
                for p in [
                    "/usr",
                    "/lib",
                    "/lib32",
                    "/lib64",
                    "/bin",
                    "/sbin",
                    "/etc",
                    "/opt",
                    "/dev",
                    "/proc",
                    "/sys",
                    "/run",
                    sys.prefix,
                    sys.base_prefix,
                    sys.exec_prefix,
                    *sys.path,
                ]
                if p and os.path.exists(p)
            }
        ),
    }
    os.makedirs(slot, mode=0o700, exist_ok=True)
    gc.freeze()  # keep the interpreter's objects out of every fork's collections: fewer copied pages
    print(json.dumps({"ready": {k: v for k, v in caps.items() if k != "readable"}}), flush=True)
    if not caps["namespaces"]:
        LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    try:
        for line in sys.stdin:
            sys.stdout.write(json.dumps(run_job(json.loads(line), caps, slot)) + "\n")
            sys.stdout.flush()
    finally:
        if caps["cgroup"]:
            try:
                os.rmdir(caps["cgroup"])
            except OSError:
                pass


if __name__ == "__main__":
    main()
