"""The sandbox against hostile programs: each is contained, reported failed/timeout, leaves no process behind and
changes no file outside its work dir, and the harness goes on. Run with namespaces (root here, as in CI) and without
them (the fallback, whose documented gaps are checked to be the only ones). Reward hacks (exiting 0 before the
asserts, forging the completion mark) must count as failures. The layers used are recorded in reports and cards."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from codellama_hf.evaluation.sandbox import (
    ROOT_FALLBACK_ENV,
    Limits,
    Program,
    Sandbox,
    summary,
)
from tests.helpers.sandbox import SECRET, _namespaces_here


def _direct_namespaces() -> bool:
    """Root that may create namespaces without a user namespace (CAP_SYS_ADMIN)."""
    return os.geteuid() == 0 and subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode == 0


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


@pytest.mark.slow
def test_reports_and_cards_record_the_layers(tmp_path, tmp_path_factory, any_sandbox):
    from codellama_hf.evaluation.report import new_result, write_report, write_result
    from tests.helpers.cards import _card, tiny_family

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
