"""The sandbox against hostile programs: each is contained, reported failed/timeout, leaves no process behind and
changes no file outside its work dir, and the harness goes on. Run with namespaces (root here) and without them
(the subreaper fallback every Linux user gets)."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from codellama_hf.evaluation.sandbox import ALLOW_ENV, Limits, Program, Sandbox, run_programs

SECRET = "hf_secret_token_do_not_leak_4242"


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


@pytest.mark.slow
@pytest.mark.parametrize("namespaces", [True, False], ids=["namespaces", "fallback"])
def test_hostile_programs_are_contained(tmp_path, monkeypatch, namespaces):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "canary.txt").write_text(SECRET)
    evil_tmp = Path("/tmp") / f"codellama_hf_evil_{os.getpid()}_{namespaces}"
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.setblocking(False)
    programs = _hostile_programs(outside, listener.getsockname()[1], evil_tmp)
    before = _snapshot(outside)
    limits = Limits(memory_bytes=1 << 30, processes=32)
    with Sandbox(workers=2, limits=limits, allow_code_execution=True, namespaces=namespaces) as sandbox:
        results = dict(zip(programs, sandbox.run(programs.values()), strict=False))
        # Nothing of any program survives it: only the two workers themselves mention the sandbox root.
        time.sleep(0.2)
        assert len(_processes_mentioning(str(sandbox.root))) == 2, _processes_mentioning(str(sandbox.root))
        # The harness goes on: a correct program still passes after the battery.
        assert sandbox.run([Program(source="assert 1 + 1 == 2\n")])[0].passed
        root = sandbox.root
    for name, result in results.items():
        assert result.status in ("failed", "timeout"), f"{name}: {result}"
        assert SECRET not in result.stdout + result.stderr, f"{name} leaked the secret"
    assert results["infinite loop"].status == results["sleep forever"].status == "timeout"
    assert results["os._exit(0)"].detail == "exited before the end of the program"
    assert _snapshot(outside) == before
    assert not evil_tmp.exists()
    with pytest.raises(BlockingIOError):
        listener.accept()
    listener.close()
    assert not _processes_mentioning(str(root)) and not _processes_mentioning("7654321")
    assert not root.exists()


def test_results_outputs_and_limits():
    programs = [
        Program(source="import sys\nprint('out')\nprint('err', file=sys.stderr)\n"),
        Program(source="print(input())\n", stdin="fed through stdin\n"),
        Program(source="print(open('data.txt').read())\n", files={"data.txt": "a file"}),
        Program(command=["sh", "-c", 'echo $HOME $TMPDIR; test "$HOME" = "$PWD"']),
        Program(source="raise SystemExit(0)\n"),
        Program(source="print('y' * 5000)\n"),
    ]
    results = run_programs(programs, workers=2, allow_code_execution=True, limits=Limits(output_bytes=1000))
    assert [r.status for r in results] == ["passed", "passed", "passed", "passed", "failed", "passed"]
    assert (results[0].stdout, results[0].stderr) == ("out\n", "err\n")
    assert results[1].stdout == "fed through stdin\n"
    assert results[2].stdout == "a file\n"
    home, tmpdir = results[3].stdout.split()
    assert home == tmpdir and "codellama_hf_sandbox-" in home
    assert results[5].stdout.endswith("[... output truncated]") and len(results[5].stdout) < 1100


def test_execution_requires_opt_in(monkeypatch):
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
