"""The kernel layers the sandbox worker stacks around a program (standard library only; imported by the worker).

- identity: a uid/gid nobody else uses (one per worker), no supplementary groups; with every capability dropped
  from the bounding set first, the switch leaves the program no capability at all (capabilities(7)).
- root view (mount namespace, root only): a tmpfs root holding read-only binds of /usr (and the /bin, /lib
  links), the interpreter's prefix, a reduced /etc (the files dynamic loaders, libc and JVM read; passwd, group and
  hosts written fresh), /dev with null/zero/full/random/urandom, and mount points for the program's own tmpfs and
  procfs. The worker pivots into it (pivot_root(2)) before its first program, so /root, /home, /run, /var/run,
  host /tmp and /dev/shm, and every pathname socket in them, do not exist for any program.
- Landlock (landlock(7)): writes only in the work dir, reads only in the listed folders, no TCP (ABI >= 4), no
  signals and no abstract Unix sockets outside the domain (ABI >= 6, LANDLOCK_SCOPE_*).
"""

from __future__ import annotations

import ctypes
import glob
import os
import signal

LIBC = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x10000000, 0x20000000, 0x40000000
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 24, 36, 38
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND = 1, 2, 4, 8, 32, 4096
MS_REC, MS_PRIVATE, MNT_DETACH = 0x4000, 1 << 18, 2
ST_KEEP = 8 | 1024 | 2048 | 4096  # noexec, noatime, nodiratime, relatime: flags a remount must keep
SYS_CLONE, SYS_PIVOT_ROOT = {"x86_64": (56, 155), "aarch64": (220, 41)}.get(os.uname().machine, (None, None))

# Landlock (linux/landlock.h); the three syscalls have the same numbers on every architecture.
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
LANDLOCK_CREATE_RULESET_VERSION, LANDLOCK_RULE_PATH_BENEATH = 1, 1
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1, 2, 4, 8
FS_WRITES_V1 = sum(1 << bit for bit in range(4, 13))  # remove dir/file, make char/dir/reg/sock/fifo/block/sym
FS_REFER, FS_TRUNCATE, FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
NET_BIND_TCP, NET_CONNECT_TCP = 1, 2
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1, 2
READ = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR

CAP_LAST = int(open("/proc/sys/kernel/cap_last_cap").read())  # read before the worker leaves the host's /proc
UID_BASE = 2_000_000_000  # + the worker's pid: an id no account uses (pids stay below 2**22)
# /etc entries interpreters and toolchains read (glibc's loader and NSS, tzdata, JVM and Mono config); no
# credentials, no host names, no user list. passwd, group and hosts are written fresh.
ETC_KEEP = (
    "alternatives",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "timezone",
    "nsswitch.conf",
    "protocols",
    "services",
    "mime.types",
    "java-*",
    "mono",
    "ssl/openssl.cnf",
)
DEVICES = ("null", "zero", "full", "random", "urandom")
SANDBOX_DIR = "/sandbox"  # the program's own tmpfs inside the root view: work/, tmp/ (= /tmp), shm/ (= /dev/shm)


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


# ------------------------------------------------------------------------------------------------- Landlock


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
    """Confine this process and all its future children (cannot be undone); sets no_new_privs first."""
    handled = _fs_rights(abi)
    attr = _RulesetAttr(
        handled,
        NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0,
        SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0,
    )
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = check(LIBC.syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), size, 0), "landlock ruleset")
    file_rights = handled & (FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV)
    rules = [(p, handled) for p in writable] + [(p, READ) for p in readable]
    rules += [(p, file_rights & ~FS_EXECUTE) for p in device_files]
    for path, rights in rules:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue  # a listed folder this system does not have
        beneath = _PathBeneath(rights if os.path.isdir(path) else rights & file_rights, fd)
        check(
            LIBC.syscall(SYS_LANDLOCK_ADD_RULE, ruleset, LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(beneath), 0),
            f"landlock rule for {path}",
        )
        os.close(fd)
    no_new_privs()
    check(LIBC.syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0), "landlock restrict")
    os.close(ruleset)


def no_new_privs() -> None:
    """exec can never grant privileges again (set-user-ID bits and file capabilities are ignored)."""
    check(LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


# ------------------------------------------------------------------------------------------------- seccomp

# (AUDIT_ARCH_*, __NR_socket, __NR_io_uring_setup) from linux/audit.h and the unistd tables.
SECCOMP_ARCH = {"x86_64": (0xC000003E, 41, 425), "aarch64": (0xC00000B7, 198, 425)}.get(os.uname().machine)
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
RET_ALLOW, RET_ERRNO = 0x7FFF0000, 0x00050000
LD_ABS, JEQ, JGE, RET = 0x20, 0x15, 0x35, 0x06  # BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, ..JGE.., BPF_RET|BPF_K
AF_UNIX, X32_SYSCALL_BIT = 1, 0x40000000


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def deny_unix_sockets() -> None:
    """A seccomp filter (seccomp(2)) for the fallback, where no mount namespace hides the host's pathname sockets
    and Landlock does not govern connect(2) on them: socket(AF_UNIX, ...) fails with EACCES, and so do io_uring
    (which could open sockets past the filter) and syscalls of another ABI (x32, i386). socketpair(2) still works.
    Needs no_new_privs (set by landlock_restrict / no_new_privs)."""
    arch, nr_socket, nr_io_uring_setup = SECCOMP_ARCH
    program = [
        (LD_ABS, 0, 0, 4),  # seccomp_data.arch
        (JEQ, 1, 0, arch),
        (RET, 0, 0, RET_ERRNO | 1),  # another ABI: EPERM
        (LD_ABS, 0, 0, 0),  # seccomp_data.nr
        (JGE, 5, 0, X32_SYSCALL_BIT),
        (JEQ, 4, 0, nr_io_uring_setup),
        (JEQ, 0, 2, nr_socket),
        (LD_ABS, 0, 0, 16),  # low 32 bits of args[0]: the address family
        (JEQ, 1, 0, AF_UNIX),
        (RET, 0, 0, RET_ALLOW),
        (RET, 0, 0, RET_ERRNO | 13),  # EACCES
    ]
    filters = (_SockFilter * len(program))(*(_SockFilter(*row) for row in program))
    fprog = _SockFprog(len(program), filters)
    check(LIBC.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0), "seccomp filter")


# ------------------------------------------------------------------------------------------------- identity


def sandbox_ids() -> tuple[int, int] | None:
    """(uid, gid) the programs of this worker run as, or None when this process may not change identity."""
    if os.geteuid() != 0:
        return None
    return UID_BASE + os.getpid(), UID_BASE + os.getpid()


def empty_bounding_set() -> None:
    """No exec can ever grant a capability again. The worker does it once, so every program inherits it; its own
    effective capabilities (mounts, clone, setuid) are untouched. Needs CAP_SETPCAP (in the worker's user namespace
    for an ordinary user); without it a no-op, and there is nothing to regain."""
    for cap in range(CAP_LAST + 1):
        LIBC.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)


def become(ids: tuple[int, int] | None) -> None:
    """Drop every capability for good (the bounding set is already empty, see empty_bounding_set): (root) switch
    to the sandbox uid/gid, which clears permitted, effective and ambient sets; then clear them with capset."""
    if ids is not None:
        uid, gid = ids
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # a credential change clears it
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()  # effective/permitted/inheritable x 2 words, all zero
    check(LIBC.capset(header, data), "capset")


# ------------------------------------------------------------------------------------------------- namespaces


def clone_into_namespaces() -> int:
    """fork(2) with new pid and mount namespaces for the child (-1 with errno set when not allowed)."""
    return LIBC.syscall(SYS_CLONE, CLONE_NEWPID | CLONE_NEWNS | signal.SIGCHLD, None, None, None, None)


def enter_namespaces(user: bool) -> bool:
    """Move this worker into mount and network namespaces of its own (no interface but a down loopback, so no
    network and no abstract Unix socket of the host), which every program it starts shares, and check that it may
    clone programs into new pid and mount namespaces. Root does it directly; an ordinary user (or `user=True`)
    first enters a user namespace (user_namespaces(7)) where it is root, mapped to its own uid/gid outside, so the
    same view is built without privileges (only that one id is mapped: a process inside may not map more).
    One network namespace per worker: one per program would cost milliseconds each."""
    if SYS_CLONE is None:
        return False
    uid, gid = os.getuid(), os.getgid()
    if LIBC.unshare(CLONE_NEWNS | CLONE_NEWNET | (CLONE_NEWUSER if user else 0)) != 0:
        return False
    if user:
        for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
            with open(f"/proc/self/{name}", "w") as handle:
                handle.write(text)
    if LIBC.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        return False
    pid = clone_into_namespaces()
    if pid == 0:
        os._exit(0)
    return pid > 0 and os.waitpid(pid, 0)[1] == 0


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = [None if x is None else x.encode() for x in (source, target, fstype, data)]
    check(LIBC.mount(enc[0], enc[1], enc[2], flags, enc[3]), f"mount {source} on {target}")


def bind_readonly(source: str, target: str) -> None:
    """A read-only, nosuid, nodev bind of `source` at `target` (the target is created to match)."""
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    _mount(source, target, None, MS_BIND)
    kept = os.statvfs(source).f_flag & ST_KEEP
    _mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | kept)


def visible(path: str, bound: list[str]) -> bool:
    return any(path == b or path.startswith(b.rstrip("/") + "/") for b in bound)


def build_root(root: str, folders: list[str], ids: tuple[int, int], userns: bool = False) -> list[str]:
    """Assemble the root view at `root` (inside this worker's mount namespace); returns the folders bound.
    `folders`: the interpreter's prefixes and the toolchain folders programs declared (`readable`)."""
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=4m,mode=0755")
    bound: list[str] = []
    for top in ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        host = "/" + top
        if os.path.islink(host):
            os.symlink(os.readlink(host), root + host)
        elif os.path.isdir(host):
            bind_readonly(host, root + host)
            bound.append(host)
    folders = [os.path.abspath(f) for f in folders if os.path.isdir(f)]
    for folder in sorted({os.path.realpath(f) for f in folders}):
        if not visible(folder, bound):
            bind_readonly(folder, root + folder)
            bound.append(folder)
    for folder in sorted(set(folders) - set(bound)):  # also where a symlinked path says it is (sys.prefix)
        if not os.path.exists(root + folder):
            try:
                bind_readonly(folder, root + folder)
                bound.append(folder)
            except OSError:
                pass  # the path runs through a link the view already has (/lib -> usr/lib)
    os.makedirs(root + "/etc", exist_ok=True)
    for pattern in ETC_KEEP:
        for host in glob.glob("/etc/" + pattern):
            if os.path.islink(host):
                os.makedirs(os.path.dirname(root + host), exist_ok=True)
                os.symlink(os.readlink(host), root + host)
            elif os.path.exists(host):
                bind_readonly(host, root + host)
    uid, gid = ids
    for name, text in {
        "passwd": f"root:x:0:0:root:/:/usr/sbin/nologin\nsandbox:x:{uid}:{gid}:sandbox:{SANDBOX_DIR}/work:/bin/sh\n",
        "group": f"root:x:0:\nsandbox:x:{gid}:\n",
        "hosts": "127.0.0.1 localhost\n::1 localhost\n",
    }.items():
        with open(f"{root}/etc/{name}", "w") as handle:
            handle.write(text)
    os.makedirs(root + "/dev")
    for name in DEVICES:
        open(f"{root}/dev/{name}", "w").close()
        _mount(f"/dev/{name}", f"{root}/dev/{name}", None, MS_BIND)
        kept = os.statvfs(f"/dev/{name}").f_flag & ST_KEEP
        _mount(None, f"{root}/dev/{name}", None, MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NOEXEC | kept)
    for name, target in {
        "dev/fd": "/proc/self/fd",
        "dev/stdin": "/proc/self/fd/0",
        "dev/stdout": "/proc/self/fd/1",
        "dev/stderr": "/proc/self/fd/2",
        "dev/shm": f"{SANDBOX_DIR}/shm",
        "tmp": f"{SANDBOX_DIR}/tmp",
    }.items():
        os.symlink(target, f"{root}/{name}")
    for name in ("proc", SANDBOX_DIR.lstrip("/")):
        os.makedirs(f"{root}/{name}")
    if userns:  # procfs mounts in a user namespace need a fully visible one beneath (proc(5)); programs mount
        _mount("/proc", f"{root}/proc", None, MS_BIND | MS_REC)  # their own over it
    return bound


def pivot_into(root: str) -> None:
    """Make `root` this process's / and detach everything else (the `pivot_root(".", ".")` idiom of
    pivot_root(2)); the worker does it once, so each program's mount namespace copies only the view."""
    os.chdir(root)
    check(LIBC.syscall(SYS_PIVOT_ROOT, b".", b"."), "pivot_root")
    check(LIBC.umount2(b".", MNT_DETACH), "detach the host's root")
    os.chdir("/")


def program_mounts(disk_bytes: int, ids: tuple[int, int]) -> None:
    """In the program's own mount namespace: its tmpfs (work dir, /tmp, /dev/shm) and the procfs of its pid
    namespace, which lists only its own processes."""
    uid, gid = ids
    options = f"size={disk_bytes},mode=0700,uid={uid},gid={gid}"
    _mount("tmpfs", SANDBOX_DIR, "tmpfs", MS_NOSUID | MS_NODEV, options)
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
