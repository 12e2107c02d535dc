"""The sandbox's contract, one program at a time: execution only when opted in, the root fallback only when asked
for, the root view an ordinary user gets, declared folders, results, outputs and limits, bad programs refused.
Hostile programs are tests/integration/test_sandbox.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
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
from tests.helpers.sandbox import SECRET, _namespaces_here


@pytest.fixture
def namespaces_here():
    if not _namespaces_here():
        pytest.skip(
            "no namespaces here (root without CAP_SYS_ADMIN, or user namespaces disabled); the fallback tests run"
        )


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
