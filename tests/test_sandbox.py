"""The sandbox against hostile programs: each is contained, reported failed/timeout, leaves no process behind and
changes no file outside its work dir, and the harness goes on. Run with namespaces (root here, as in CI) and without
them (the fallback, which as root runs only when asked to and whose documented gaps are checked to be the only
ones). Reward hacks (exiting 0 before the asserts, forging the completion mark) must count as failures."""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from codellama_hf.evaluation import sandbox as sandbox_module
from codellama_hf.evaluation.sandbox import (
    ALLOW_ENV,
    ROOT_FALLBACK_ENV,
    Limits,
    Program,
    Sandbox,
    run_programs,
    summary,
)

SECRET = "hf_secret_token_do_not_leak_4242"


@functools.cache
def _namespaces_here() -> bool:
    """Whether this machine gives the sandbox namespaces (root with CAP_SYS_ADMIN as in CI, or a user
    allowed user namespaces)."""
    try:
        with Sandbox(workers=1, allow_code_execution=True) as sandbox:
            return sandbox.capabilities()["namespaces"]
    except RuntimeError as err:  # root without namespaces: the fallback runs only when asked for
        if "refusing" not in str(err):
            raise
        return False


def _direct_namespaces() -> bool:
    """Root that may create namespaces without a user namespace (CAP_SYS_ADMIN)."""
    return os.geteuid() == 0 and subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode == 0


@pytest.fixture
def namespaces_here():
    if not _namespaces_here():
        pytest.skip(
            "no namespaces here (root without CAP_SYS_ADMIN, or user namespaces disabled); the fallback tests run"
        )


@pytest.fixture
def any_sandbox(monkeypatch):
    """Root without namespaces (a container without CAP_SYS_ADMIN) runs the fallback only when asked for."""
    if os.geteuid() == 0 and not _namespaces_here():
        monkeypatch.setenv(ROOT_FALLBACK_ENV, "1")


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(f"{entry}: {cmdline}")
    return found


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _hostile_programs(outside: Path, port: int, evil_tmp: Path) -> dict[str, Program]:
    canary = outside / "canary.txt"
    quick = 1.0
    return {
        "fork bomb": Program(source="import os\nwhile True:\n    os.fork()\n", timeout=quick),
        "memory bomb": Program(source="chunks = []\nwhile True:\n    chunks.append(bytearray(1 << 28))\n"),
        "infinite loop": Program(source="while True:\n    pass\n", timeout=quick),
        "sleep forever": Program(source="import time\ntime.sleep(10**6)\n", timeout=quick),
        "huge output": Program(source="while True:\n    print('x' * 100000)\n", timeout=quick),
        "write outside": Program(
            source=f"open({str(canary)!r}, 'w').write('owned')\nopen({str(evil_tmp)!r}, 'w').write('owned')\n"
        ),
        "delete outside": Program(
            source=f"import os, shutil\nos.remove({str(canary)!r})\nshutil.rmtree({str(outside)!r})\n"
        ),
        "read secret file": Program(source=f"print(open({str(canary)!r}).read())\n"),
        "network": Program(
            source=f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
            "s.sendall(b'exfiltrated')\n"
        ),
        "read HF_TOKEN": Program(
            source="import os\nprint(dict(os.environ))\n"
            f"print(open('/proc/{os.getpid()}/environ').read())\n"
            "assert os.environ['HF_TOKEN']\n"
        ),
        "signal the parent": Program(
            source=f"import os, signal\nos.kill({os.getpid()}, signal.SIGTERM)\n"
            "os.kill(os.getppid(), signal.SIGKILL)\n"
            "os.kill(-1, signal.SIGKILL)\n"
        ),
        "daemonize": Program(
            source="import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            "        time.sleep(60)\n    os._exit(0)\nos._exit(0)\n"
        ),
        "orphan subprocess": Program(
            source="import subprocess\nsubprocess.Popen(['sleep', '7654321'], "
            "start_new_session=True)\nraise SystemExit(0)\n"
        ),
        "deep recursion": Program(
            source="import sys\nsys.setrecursionlimit(10**8)\ndef f(n):\n    return f(n + 1)\nf(0)\n", timeout=quick
        ),
        "os._exit(0)": Program(source="import os\nos._exit(0)\nassert False\n"),
        "read stdin": Program(source="input()\n"),
        "lock own dir": Program(
            source="import os\nos.mkdir('d')\nopen('d/f', 'w').write('x')\nos.chmod('d', 0)\n"
            "os.chmod('.', 0)\nraise RuntimeError\n"
        ),
        "shell fork bomb": Program(command=["sh", "-c", "b() { b | b & }; b; sleep 5; exit 1"], timeout=quick),
    }


def _host_programs(paths: dict[str, Path], helper_pid: int) -> dict[str, Program]:
    """Programs after host secrets and host sockets; each exits 0 only if it got what it was after."""
    return {
        "read /etc/shadow": Program(source="print(open('/etc/shadow').read())\n"),
        "read a home dir": Program(source=f"print(open({str(paths['home'])!r}).read())\n"),
        "list /root and /home": Program(
            source="import os\nfound = [n for d in ('/root', '/home') if os.path.isdir(d) for n in os.listdir(d)]\n"
            "print(len(found))\nassert set(found) - {'.pyenv'}\n"
        ),
        "see host paths": Program(
            source="import os\n"
            f"seen = [p for p in {[str(p) for p in paths.values()] + ['/run', '/var/run']!r} if os.path.exists(p)]\n"
            "print(len(seen))\nassert seen\n"
        ),
        "read another process's environment": Program(source=f"print(open('/proc/{helper_pid}/environ').read())\n"),
        "read the parent's environment": Program(
            source="import os\nprint(open(f'/proc/{os.getppid()}/environ').read())\n"
        ),
        "read another process's root": Program(source=f"print(open('/proc/{helper_pid}/root/etc/shadow').read())\n"),
        "read /proc cmdlines": Program(
            source="import os\nfound = 0\nfor pid in filter(str.isdigit, os.listdir('/proc')):\n"
            "    try:\n"
            f"        found += {SECRET!r}.encode() in open(f'/proc/{{pid}}/cmdline', 'rb').read()\n"
            "    except OSError:\n        pass\n"
            "print(found)\nassert found\n"
        ),
        "connect to a host unix socket": Program(
            source="import socket\ns = socket.socket(socket.AF_UNIX)\n"
            f"s.connect({str(paths['socket'])!r})\ns.sendall(b'exfiltrated')\n"
        ),
        "connect to an abstract unix socket": Program(
            source="import socket\ns = socket.socket(socket.AF_UNIX)\n"
            f"s.connect({chr(0) + paths['socket'].name!r})\ns.sendall(b'exfiltrated')\n"
        ),
    }


# A failing program dressed up as a passing one; the sandbox must report every one of them failed.
FAILING = "def add(a, b):\n    return a - b\n"
REWARD_HACKS = {
    "sys.exit(0) before the asserts": FAILING + "import sys\nsys.exit(0)\nassert add(1, 2) == 3\n",
    "exit() before the asserts": FAILING + "exit()\nassert add(1, 2) == 3\n",
    "atexit forces exit 0": FAILING + "import atexit, os\natexit.register(os._exit, 0)\nassert add(1, 2) == 3\n",
    "excepthook forces exit 0": FAILING + "import sys, os\nsys.excepthook = lambda *a: os._exit(0)\n"
    "assert add(1, 2) == 3\n",
    "patched os._exit": FAILING + "import os\nreal = os._exit\nos._exit = lambda code: real(0)\n"
    "assert add(1, 2) == 3\n",
    "patched BaseException": FAILING + "import atexit, builtins, os\nbuiltins.BaseException = KeyError\n"
    "atexit.register(os._exit, 0)\nassert add(1, 2) == 3\n",
    "thread calls os._exit(0)": FAILING + "import os, threading, time\n"
    "threading.Thread(target=os._exit, args=(0,)).start()\ntime.sleep(0.5)\nassert add(1, 2) == 3\n",
    "parent exits 0 after a forked child": FAILING + "import os\nif os.fork():\n    os.wait()\n    os._exit(0)\n"
    "assert add(1, 2) == 3\n",
    "exec /bin/true": FAILING + "import os\nos.execv('/bin/true', ['true'])\nassert add(1, 2) == 3\n",
    "fake result markers": FAILING + "import json, os\nprint('passed')\nprint('All tests passed: 164/164')\n"
    "print(json.dumps({'id': 0, 'returncode': 0, 'setup': True, 'completed': True, 'timed_out': False}))\n"
    "os.write(1, b's1')\nassert add(1, 2) == 3\n",
    "completion mark forged on every fd": FAILING + "import os\nfor fd in range(3, 256):\n    try:\n"
    "        os.write(fd, b'1')\n    except OSError:\n        pass\nos._exit(0)\n",
}

# Program -> the `not_guaranteed` entry of the fallback that lets it through (checked to be listed and real).
FALLBACK_GAPS = {
    "see host paths": "private filesystem view",
    "read /proc cmdlines": "other processes invisible",
}


@pytest.fixture
def host_secrets(tmp_path, monkeypatch):
    """Secrets and listening sockets on the host: a home-dir file, a /dev/shm file, a process with the secret in
    its environment and command line, TCP, pathname and abstract Unix listeners."""
    monkeypatch.setenv("HF_TOKEN", SECRET)
    tag = f"codellama_hf_sandbox_test_{os.getpid()}"
    paths = {
        "home": Path.home() / f".{tag}",
        "shm": Path("/dev/shm") / tag,
        "host tmp": tmp_path / "host_tmp_file",
        "socket": Path("/tmp") / f"{tag}.sock",
    }
    for key in ("home", "shm", "host tmp"):
        paths[key].write_text(SECRET)
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", SECRET], env={"HF_TOKEN": SECRET})
    listeners = {
        "tcp": socket.socket(),
        "unix": socket.socket(socket.AF_UNIX),
        "abstract": socket.socket(socket.AF_UNIX),
    }
    listeners["tcp"].bind(("127.0.0.1", 0))
    listeners["unix"].bind(str(paths["socket"]))
    listeners["abstract"].bind("\0" + paths["socket"].name)
    for listener in listeners.values():
        listener.listen(4)
        listener.setblocking(False)
    try:
        yield paths, helper.pid, listeners
    finally:
        helper.kill()
        helper.wait()
        for listener in listeners.values():
            listener.close()
        for path in paths.values():
            path.unlink(missing_ok=True)


def _connections(listener: socket.socket) -> list[bytes]:
    received = []
    while True:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return received
        conn.settimeout(1)
        received.append(conn.recv(100))
        conn.close()


@pytest.mark.slow
@pytest.mark.parametrize("namespaces", [True, "user", False], ids=["namespaces", "user-namespace", "fallback"])
def test_hostile_programs_are_contained(tmp_path, monkeypatch, host_secrets, namespaces):
    if namespaces is True and not _namespaces_here():
        pytest.skip("no namespaces on this machine (root without CAP_SYS_ADMIN, or user namespaces disabled)")
    paths, helper_pid, listeners = host_secrets
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "canary.txt").write_text(SECRET)
    evil_tmp = Path("/tmp") / f"codellama_hf_evil_{os.getpid()}_{namespaces}"
    programs = _hostile_programs(outside, listeners["tcp"].getsockname()[1], evil_tmp)
    programs.update(_host_programs(paths, helper_pid))
    programs.update({name: Program(source=source) for name, source in REWARD_HACKS.items()})
    before = _snapshot(outside)
    limits = Limits(memory_bytes=1 << 30, processes=32)
    if not namespaces and os.geteuid() == 0:
        monkeypatch.setenv(ROOT_FALLBACK_ENV, "1")  # as root the fallback runs only when asked to
    with Sandbox(workers=2, limits=limits, allow_code_execution=True, namespaces=namespaces) as sandbox:
        layers = sandbox.capabilities()
        assert layers["namespaces"] is (namespaces is not False), layers
        assert layers["user_namespace"] is (namespaces == "user" or (namespaces is True and not _direct_namespaces()))
        results = dict(zip(programs, sandbox.run(programs.values()), strict=False))
        # Nothing of any program survives it: only the two workers themselves mention the sandbox root.
        time.sleep(0.2)
        assert len(_processes_mentioning(str(sandbox.root))) == 2, _processes_mentioning(str(sandbox.root))
        # The harness goes on: a correct program still passes after the battery.
        assert sandbox.run([Program(source="assert 1 + 1 == 2\n")])[0].passed
        root = sandbox.root
    gaps = {} if namespaces else FALLBACK_GAPS
    for name, result in results.items():
        if name in gaps:  # the fallback lets these through, and says so
            assert any(gaps[name] in gap for gap in layers["not_guaranteed"]), (name, layers)
            assert result.status == "passed", f"{name}: documented as reachable in the fallback, got {result}"
        else:
            assert result.status in ("failed", "timeout"), f"{name}: {result}"
        assert SECRET not in result.stdout + result.stderr, f"{name} leaked the secret"
    if namespaces:
        assert layers["unix_sockets"] == "unreachable" and layers["filesystem"].startswith("private root")
    if layers["namespaces"] and not layers["user_namespace"] and os.geteuid() == 0:
        assert layers["not_guaranteed"] == [] and layers["identity"].startswith("uid/gid")
    assert results["infinite loop"].status == results["sleep forever"].status == "timeout"
    assert results["os._exit(0)"].detail == "exited before the end of the program"
    for name in (
        "thread calls os._exit(0)",
        "parent exits 0 after a forked child",
        "exec /bin/true",
    ):
        assert results[name].returncode == 0 and results[name].detail == "exited before the end of the program"
    assert results["completion mark forged on every fd"].detail == "wrote to the sandbox's completion pipe"
    assert _snapshot(outside) == before
    assert not evil_tmp.exists()
    assert _connections(listeners["tcp"]) == [] and _connections(listeners["abstract"]) == []
    unix = _connections(listeners["unix"])
    assert unix == ([b"exfiltrated"] if "connect to a host unix socket" in gaps else []), unix
    assert not _processes_mentioning(str(root)) and not _processes_mentioning("7654321")
    assert not root.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="the refusal is for root")
def test_root_fallback_is_refused_unless_asked(monkeypatch):
    monkeypatch.delenv(ROOT_FALLBACK_ENV, raising=False)
    with pytest.raises(RuntimeError, match=f"refusing .* as root without namespaces.*{ROOT_FALLBACK_ENV}"):
        Sandbox(workers=1, allow_code_execution=True, namespaces=False)
    unix = "import socket\na, b = socket.socketpair()\na.sendall(b'x')\nassert b.recv(1) == b'x'\n"
    unix += (
        "try:\n    socket.socket(socket.AF_UNIX)\nexcept PermissionError:\n    pass\nelse:\n    raise SystemExit(1)\n"
    )
    with Sandbox(workers=1, allow_code_execution=True, namespaces=False, allow_root_fallback=True) as sandbox:
        layers = sandbox.capabilities()
        assert sandbox.run([Program(source="assert 1 + 1 == 2\n")])[0].passed
        # seccomp: socketpair works, no AF_UNIX socket can be made (so no host socket reached)
        assert sandbox.run([Program(source=unix)])[0].passed == (layers["unix_sockets"].startswith("none"))
    assert not layers["namespaces"] and layers["not_guaranteed"]
    assert "not guaranteed: a private filesystem view" in summary(layers)


CORRECT_PROGRAMS = {
    "multiprocessing pool": "import multiprocessing as mp\nif __name__ == '__main__':\n"
    "    with mp.Pool(2) as pool:\n        assert pool.map(abs, [-1, -2]) == [1, 2]\n",
    "multiprocessing manager": "import multiprocessing as mp\nif __name__ == '__main__':\n"
    "    with mp.Manager() as manager:\n        d = manager.dict(a=1)\n        assert d['a'] == 1\n",
    "tempfile and /dev/shm": "import os, tempfile\nwith tempfile.NamedTemporaryFile() as f:\n    f.write(b'x')\n"
    "open('/dev/shm/x', 'w').write('y')\nassert os.listdir('/dev/shm') == ['x']\n",
    "subprocess": "import subprocess, sys\n"
    "assert subprocess.run([sys.executable, '-c', 'print(6 * 7)'], capture_output=True).stdout == b'42\\n'\n",
    "threads": "import threading\nout = []\nts = [threading.Thread(target=out.append, args=(i,)) for i in range(8)]\n"
    "[t.start() for t in ts]\n[t.join() for t in ts]\nassert sorted(out) == list(range(8))\n",
    "stdlib": "import hashlib, json, math, re, collections, itertools, datetime, decimal, fractions, heapq, bisect\n"
    "assert hashlib.sha256(b'').hexdigest().startswith('e3b0')\nassert json.loads('[1]') == [1]\n",
    "no capabilities": "import os\nstatus = open('/proc/self/status').read()\n"
    "caps = dict(line.split(':') for line in status.splitlines() if line.startswith('Cap'))\n"
    "assert all(int(v, 16) == 0 for v in caps.values()), caps\n"
    "assert 'NoNewPrivs:\\t1' in status and os.getgroups() in ([], [os.getgid()])\n",
    "user and home": "import getpass, os, pathlib\nassert getpass.getuser()\n"
    "pathlib.Path('~/f').expanduser().write_text('x')\nassert os.path.exists(os.environ['HOME'] + '/f')\n",
}


def test_an_ordinary_user_gets_the_root_view(tmp_path):
    """The worker run as nobody (a system Python it can reach): a user namespace gives it the same view."""
    python = shutil.which("python3", path="/usr/bin:/bin")
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    if os.geteuid() != 0 or not python or not shutil.which("setpriv"):
        pytest.skip("needs root (to become nobody), setpriv and a system python3")
    if subprocess.run([*nobody, python, "-c", "import json"], capture_output=True).returncode:
        pytest.skip(f"{python} cannot run as nobody here")
    folder = Path(tempfile.mkdtemp(prefix="codellama_hf_sandbox_nobody-"))
    try:
        folder.chmod(0o777)
        for name in ("sandbox_worker.py", "sandbox_layers.py"):
            shutil.copy(Path(sandbox_module.__file__).with_name(name), folder / name)
        limits = {
            "cpu_seconds": 11,
            "memory_bytes": 1 << 30,
            "file_bytes": 1 << 20,
            "open_files": 64,
            "disk_bytes": 1 << 24,
        }
        base = {"timeout": 10, "limits": limits, "env": {"PATH": "/usr/bin:/bin"}, "command": [], "files": {}}
        base.update(stdin="", readable=[], output_bytes=4000)
        sources = [
            "import os\nassert sorted(os.listdir('/')) == "
            "['bin', 'dev', 'etc', 'lib', 'lib64', 'proc', 'sandbox', 'sbin', 'tmp', 'usr'], os.listdir('/')\n"
            "assert [p for p in os.listdir('/proc') if p.isdigit()] == ['1']\n"
            "status = open('/proc/self/status').read()\nassert 'CapEff:\\t0000000000000000' in status\n"
            "assert 'CapBnd:\\t0000000000000000' in status and 'NoNewPrivs:\\t1' in status\n",
            "print(open('/etc/shadow').read())\n",
        ]
        jobs = "".join(json.dumps({**base, "id": i, "source": s}) + "\n" for i, s in enumerate(sources))
        worker = [
            *nobody,
            python,
            "-E",
            "-s",
            str(folder / "sandbox_worker.py"),
            "8",
            "auto",
            str(folder / "slot"),
            "[]",
        ]
        out = subprocess.run(worker, input=jobs, capture_output=True, text=True, timeout=60, cwd=folder)
        lines = [json.loads(line) for line in out.stdout.splitlines()]
        assert lines and lines[0]["ready"]["namespaces"] and lines[0]["ready"]["userns"], out.stderr
        view, shadow = lines[1:]
        assert view["completed"] and view["returncode"] == 0, view
        assert shadow["returncode"] == 1 and "No such file" in shadow["stderr"], shadow
    finally:
        shutil.rmtree(folder)


def test_correct_programs_keep_working_in_the_root_view(namespaces_here):
    programs = [Program(source=source, timeout=30) for source in CORRECT_PROGRAMS.values()]
    compiled = {
        "g++": "printf '#include <cassert>\\nint main(){assert(6*7==42);}' > a.cpp && g++ -o a a.cpp && ./a",
        "javac": "printf 'class P{public static void main(String[] a){assert 6*7==42;}}' > P.java && "
        "javac -J-Xmx256m P.java && java -ea -Xmx256m -XX:-UsePerfData P",
    }
    names = list(CORRECT_PROGRAMS)
    for tool, script in compiled.items():
        if shutil.which(tool):
            programs.append(Program(command=["sh", "-c", script], timeout=60, memory_bytes=8 << 30))
            names.append(tool)
    with Sandbox(workers=2, allow_code_execution=True) as sandbox:
        layers = sandbox.capabilities()
        assert layers["namespaces"]
        if layers["identity"].startswith("uid/gid"):  # root gave programs an id of their own (one per worker)
            own = "import os\nids = os.getresuid()\nassert ids == os.getresgid() and len(set(ids)) == 1\n"
            programs.append(Program(source=own + "assert ids[0] >= 2_000_000_000 and not os.getgroups()\n"))
            names.append("the sandbox's own uid")
        results = sandbox.run(programs)
    for name, result in zip(names, results, strict=True):
        assert result.passed, f"{name}: {result}"


def test_declared_folders_become_readable(namespaces_here):
    with pytest.raises(ValueError, match="lies under one of /tmp"):
        run_programs([Program(source="pass", readable=["/tmp/jdk"])], allow_code_execution=True, workers=1)
    # The root view replaces /tmp: a toolchain folder elsewhere, here under the (otherwise hidden) home dir.
    tmp_path = Path.home() / f".codellama_hf_sandbox_test_toolchain_{os.getpid()}"
    tmp_path.mkdir()
    try:
        _read_declared_folder(tmp_path)
    finally:
        shutil.rmtree(tmp_path)


def _read_declared_folder(tmp_path: Path) -> None:
    toolchain = tmp_path / "toolchain"
    toolchain.mkdir()
    (toolchain / "lib.txt").write_text("library")
    (tmp_path / "secret.txt").write_text(SECRET)
    read_lib = f"print(open({str(toolchain / 'lib.txt')!r}).read())\n"
    with Sandbox(workers=1, allow_code_execution=True) as sandbox:
        undeclared, declared, beside = sandbox.run(
            [
                Program(source=read_lib),
                Program(source=read_lib, readable=[str(toolchain)]),
                Program(source=f"print(open({str(tmp_path / 'secret.txt')!r}).read())\n", readable=[str(toolchain)]),
            ]
        )
    assert not undeclared.passed and declared.passed and declared.stdout == "library\n"
    assert not beside.passed and SECRET not in beside.stdout


def test_results_outputs_and_limits(any_sandbox):
    programs = [
        Program(source="import sys\nprint('out')\nprint('err', file=sys.stderr)\n"),
        Program(source="print(input())\n", stdin="fed through stdin\n"),
        Program(source="print(open('data.txt').read())\n", files={"data.txt": "a file"}),
        Program(command=["sh", "-c", 'echo $HOME $TMPDIR; test "$HOME" = "$PWD" && touch "$TMPDIR/t" "$HOME/h"']),
        Program(source="raise SystemExit(0)\n"),
        Program(source="print('y' * 5000)\n"),
    ]
    results = run_programs(programs, workers=2, allow_code_execution=True, limits=Limits(output_bytes=1000))
    assert [r.status for r in results] == ["passed", "passed", "passed", "passed", "failed", "passed"]
    assert (results[0].stdout, results[0].stderr) == ("out\n", "err\n")
    assert results[1].stdout == "fed through stdin\n"
    assert results[2].stdout == "a file\n"
    home, tmpdir = results[3].stdout.split()
    if _namespaces_here():  # the program's own tmpfs holds its work dir and its /tmp
        assert (home, tmpdir) == ("/sandbox/work", "/tmp")
    else:
        assert home == tmpdir and "codellama_hf_sandbox-" in home
    assert results[5].stdout.endswith("[... output truncated]") and len(results[5].stdout) < 1100


def test_execution_requires_opt_in(monkeypatch, any_sandbox):
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    with pytest.raises(RuntimeError, match="allow-code-execution"):
        run_programs([Program(source="pass")])
    monkeypatch.setenv(ALLOW_ENV, "1")
    assert run_programs([Program(source="pass")], workers=1)[0].passed


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(), "exactly one"),
        (dict(source="x", command=["ls"]), "exactly one"),
        (dict(source="x", timeout=0), "timeout"),
        (dict(command=["ls"], files={"../escape": ""}), "relative path"),
        (dict(command=["ls"], files={"/etc/passwd": ""}), "relative path"),
    ],
)
def test_bad_programs_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Program(**kwargs)


@pytest.mark.slow
def test_reports_and_cards_record_the_layers(tmp_path, tmp_path_factory, any_sandbox):
    from codellama_hf.evaluation.report import new_result, write_report, write_result
    from tests.test_cards import _card, tiny_family

    with Sandbox(workers=1, allow_code_execution=True) as sandbox:
        layers = sandbox.capabilities()
    counts = dict(num_problems=164, total_problems=164, num_samples=164)
    write_result(tmp_path, new_result("humaneval", "m", metrics={"pass@1": 0.5}, sandbox=layers, **counts))
    write_result(tmp_path, new_result("multiple-cs", "m", skipped="mcs, mono not found on PATH"))  # ran no code
    line = f"Programs of humaneval ran in codellama_hf's sandbox: {summary(layers)}."
    assert line in write_report(tmp_path).read_text()
    assert line in _card(tiny_family(tmp_path_factory)["tiny"], tmp_path).text
    assert ("namespaces (private root, no network)" in line) == layers["namespaces"]
    assert f"Landlock ABI {layers['landlock']}" in line or not layers["landlock"]
