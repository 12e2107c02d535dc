"""Shared by the sandbox tests: fixtures and helpers."""

from __future__ import annotations

import functools
import os

import pytest

from codellama_hf.evaluation.sandbox import (
    ROOT_FALLBACK_ENV,
    Sandbox,
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


@pytest.fixture
def any_sandbox(monkeypatch):
    """Root without namespaces (a container without CAP_SYS_ADMIN) runs the fallback only when asked for."""
    if os.geteuid() == 0 and not _namespaces_here():
        monkeypatch.setenv(ROOT_FALLBACK_ENV, "1")
