"""Fingerprint of a base model, so that an adapter is only ever applied to the exact base it was trained on.

A 7B-Python adapter loads without a shape error onto 7B base, and gives nonsense. The fingerprint is a sample of
rows of the input and output embeddings, which LoRA never changes; the comparison tolerates dtype changes (bf16 vs
fp32) but not different weights.
"""

from __future__ import annotations

import base64
import os

_FINGERPRINT_ROWS, _FINGERPRINT_COLUMNS = 16, 256
_FINGERPRINT_RTOL = 1 / 64  # bf16 keeps 8 significant bits (relative rounding <= 1/512); trained weights move more


def _sample_rows(weight, rows: list[int]):
    """Rows of a (possibly ZeRO-3 partitioned) matrix, first columns only, as float32 on the CPU."""
    import contextlib

    import torch

    gather = contextlib.nullcontext()
    if hasattr(weight, "ds_id"):
        import deepspeed

        gather = deepspeed.zero.GatheredParameters([weight], modifier_rank=None)
    with gather, torch.no_grad():
        return weight[rows, :_FINGERPRINT_COLUMNS].detach().float().cpu()


def base_fingerprint(model) -> dict:
    """Sampled rows of the input and output embeddings (bf16, base64): what identifies the base of an adapter."""
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    matrices = {"embed": base.get_input_embeddings(), "output": base.get_output_embeddings()}
    vocab = matrices["embed"].num_embeddings
    # Rows from the first 90% of the vocabulary: grown vocabularies get their new rows at the end.
    rows = sorted({int(i) for i in torch.linspace(0, max(0, int(0.9 * vocab) - 1), _FINGERPRINT_ROWS)})
    out = {"vocab_size": vocab, "hidden_size": base.config.hidden_size, "rows": rows}
    for name, module in matrices.items():
        if module is None:
            continue
        sample = _sample_rows(module.weight, rows).to(torch.bfloat16)
        out[name] = base64.b64encode(sample.view(torch.int16).numpy().tobytes()).decode()
    return out


def _decode(sample: str, rows: int):
    import numpy as np
    import torch

    values = torch.from_numpy(np.frombuffer(base64.b64decode(sample), dtype=np.int16).copy())
    return values.view(torch.bfloat16).float().reshape(rows, -1)


def fingerprint_mismatch(expected: dict, model) -> str | None:
    """Why `model` is not the base `expected` describes, or None when it is."""
    import torch

    got = base_fingerprint(model)
    for key in ("vocab_size", "hidden_size"):
        if got[key] != expected[key]:
            return f"{key} {got[key]} instead of {expected[key]}"
    if got["rows"] != expected["rows"]:
        return "a different vocabulary layout"
    for name in ("embed", "output"):
        if name not in expected or name not in got:
            continue
        a, b = _decode(expected[name], len(expected["rows"])), _decode(got[name], len(got["rows"]))
        close = torch.isclose(a, b, rtol=_FINGERPRINT_RTOL, atol=1e-6 * float(a.abs().max()))
        share = float(close.float().mean())
        if share < 0.99:
            which = "input" if name == "embed" else "output"
            return f"{which} embeddings that differ ({100 * share:.0f}% of the sampled values match)"
    return None


def check_base(model, folder: str | os.PathLike, metadata: dict | None, base_name: str) -> None:
    """Refuse an adapter whose recorded base is not `model` (see the module docstring)."""
    if metadata is None:
        return
    why = fingerprint_mismatch(metadata["fingerprint"], model)
    if why:
        raise ValueError(
            f"adapter {folder} was trained on another base model ({metadata.get('base_model')}); {base_name} has "
            f"{why}. Load the adapter with the model it was trained on."
        )
