"""A quiet console: notices a user cannot act on are held back until they matter.

bitsandbytes logs, at import time on CPUs with AVX512-BF16, that it could not load its optional 4-bit CPU kernel
from the Hub (`kernels` package). peft imports bitsandbytes and transformers' Trainer imports peft, so every run
printed it, although only a 4-bit (QLoRA, `quantization="4bit"`) model would ever use that kernel. The notice is
kept and shown when a quantized model is requested (`show_quantization_notices`), where it explains a slower path.
"""

from __future__ import annotations

import logging

# (logger name, text that identifies the notice); `kernels` logs its own notice first when the Hub is offline.
_QUANTIZATION_NOTICES = (
    ("bitsandbytes.backends.cpu.ops", "gemm_4bit_forward"),
    ("kernels._internals.hf_hub", "quantization-bitsandbytes"),
)
_held: list[logging.LogRecord] = []


class _HoldBack(logging.Filter):
    def __init__(self, marker: str):
        super().__init__()
        self.marker = marker

    def filter(self, record: logging.LogRecord) -> bool:
        if self.marker in record.getMessage():
            _held.append(record)
            return False
        return True


def hold_back_quantization_notices() -> None:
    """Install the filters (before bitsandbytes is imported; idempotent)."""
    for name, marker in _QUANTIZATION_NOTICES:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _HoldBack) for f in logger.filters):
            logger.addFilter(_HoldBack(marker))


def show_quantization_notices() -> None:
    """A quantized model was requested: the held notices now concern the user; print them once."""
    while _held:
        record = _held.pop(0)
        logging.getLogger("codellama_hf.quantization").warning("%s: %s", record.name, record.getMessage())
