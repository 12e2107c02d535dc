"""A quiet console: bitsandbytes' optional-kernel notice appears only when a quantized model is requested."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT

NOTICE = "gemm_4bit_forward"


def _stderr(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stderr


@pytest.mark.slow
def test_bitsandbytes_kernel_notice_waits_for_a_quantized_model():
    if NOTICE not in _stderr("import bitsandbytes"):
        pytest.skip("bitsandbytes prints no CPU kernel notice on this machine (no AVX512-BF16, or the kernel loads)")
    assert NOTICE not in _stderr(
        "import codellama_hf, peft"
    )  # every training run imports peft (transformers.trainer does)
    asked = _stderr(
        "import codellama_hf, peft\n"
        "from codellama_hf.adapters import AdapterArguments\n"
        "options = AdapterArguments(use_peft=True, load_in_4bit=True)\n"
        "options.quantization_config(); options.quantization_config()\n"
    )
    assert asked.count(NOTICE) == 1  # shown once, when it concerns the user
