"""Shared by the evaluation_protocol tests: fixtures and helpers."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def smollm2_path():
    from codellama_hf.assets import smollm2_dir

    return smollm2_dir()
