"""Helpers shared by the test modules (no test module imports another one): paths, the CLI in a subprocess, and one
module per topic with the fixtures and builders that several test files use (registered in tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600):
    """Run `python -m codellama_hf ...` in a real subprocess with this checkout first on the path."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "codellama_hf", *args],
        cwd=cwd or ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cli(*args: str) -> subprocess.CompletedProcess:
    """`codellama-hf ARGS` in this process (the `main` the console script calls): exit status, stdout and stderr,
    without the seconds a new interpreter spends importing torch. The tests of a real process are integration tests
    (`run_cli`)."""
    import contextlib
    import io

    from codellama_hf.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as done:  # argparse's usage errors
            code = done.code if isinstance(done.code, int) else 1
    return subprocess.CompletedProcess(["codellama-hf", *args], code, out.getvalue(), err.getvalue())


def built_once(tmp_path_factory, name: str, build) -> Path:
    """`build(folder)` run once per test session, shared by every pytest-xdist worker (pytest-xdist's documented
    pattern: the workers' common base folder and a file lock); returns the folder. A build that fails leaves no
    folder behind, so the next worker tries again and fails with the same error."""
    import shutil

    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # .../pytest-N/popen-gwK -> .../pytest-N, shared by the workers of this run
    folder, done = base / name, base / f"{name}.done"
    with FileLock(str(base / f"{name}.lock")):
        if not done.is_file():
            shutil.rmtree(folder, ignore_errors=True)
            build(folder)
            done.write_text("")
    return folder


def load_recipe(name: str):
    """recipes/<name>.py as a module (recipes/ is a folder of scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"recipe_{name}", ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
