"""Llama architectures of the Code Llama family, and RoPE theta handling that works under transformers 4 and 5.

transformers 5 reads theta from `config.rope_parameters` and silently ignores `rope_theta=` passed to `from_pretrained`
(docs/stack-notes.md, RoPE theta). Everything in this toolkit sets theta through `set_rope_theta`, checks the value the
rotary embedding really uses with `assert_rope_theta`, and saves configs with both keys.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformers import LlamaConfig

from codellama_hf.io import write_json

CODE_THETA = 1_000_000.0
LLAMA2_THETA = 10_000.0

# Shapes of the released models (the params.json of Meta's releases); `tiny` is this toolkit's CPU preset.
SIZES: dict[str, dict] = {
    "7b": dict(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32
    ),
    "13b": dict(
        hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40, num_key_value_heads=40
    ),
    "34b": dict(
        hidden_size=8192, intermediate_size=22016, num_hidden_layers=48, num_attention_heads=64, num_key_value_heads=8
    ),
    "tiny": dict(
        hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2
    ),
}


def llama_config(
    size: str, *, vocab_size: int, theta: float = LLAMA2_THETA, max_position_embeddings: int = 4096, **overrides
) -> LlamaConfig:
    """A LlamaConfig for one of SIZES with Llama 2 conventions (untied embeddings, RMSNorm eps 1e-5)."""
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; choose one of {sorted(SIZES)}")
    fields = dict(
        SIZES[size],
        vocab_size=vocab_size,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        hidden_act="silu",
    )
    fields.update(overrides)
    config = LlamaConfig(**fields)
    set_rope_theta(config, theta)
    return config


def rope_theta(config) -> float:
    """The theta a config will really use (transformers 5: rope_parameters; 4.x: rope_theta)."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and "rope_theta" in params:
        return float(params["rope_theta"])
    return float(config.rope_theta)


def set_rope_theta(config, theta: float, *, max_position_embeddings: int | None = None) -> None:
    """Set theta so that it takes effect under transformers 5, and keep the 4.x attribute in step."""
    params = dict(getattr(config, "rope_parameters", None) or {"rope_type": "default"})
    params["rope_theta"] = float(theta)
    config.rope_parameters = params
    if max_position_embeddings is not None:
        config.max_position_embeddings = max_position_embeddings
    if rope_theta(config) != float(theta):
        raise RuntimeError(f"rope theta {theta} did not take effect (config reports {rope_theta(config)})")


def effective_rope_theta(model: torch.nn.Module) -> float:
    """Theta recovered from the rotary embedding's inv_freq buffer, i.e. what the forward pass uses."""
    rotary = next((m for n, m in model.named_modules() if n.endswith("rotary_emb")), None)
    if rotary is None:
        raise ValueError("model has no rotary embedding module")
    inv_freq = rotary.inv_freq.detach().double().cpu()
    dim = 2 * inv_freq.numel()
    # inv_freq[1] = theta ** (-2 / dim)
    return float(inv_freq[1] ** (-dim / 2))


def assert_rope_theta(model: torch.nn.Module, theta: float, *, rtol: float = 1e-4) -> None:
    """Fail loudly if the model's rotary embedding does not use `theta`."""
    got = effective_rope_theta(model)
    if abs(got - theta) > rtol * theta:
        raise RuntimeError(
            f"the model's rotary embedding uses theta {got:.6g}, not {theta:.6g}: the override did not take effect "
            "(transformers 5 ignores rope_theta=; set config.rope_parameters)"
        )


def write_config_with_both_rope_keys(folder: str | os.PathLike) -> None:
    """Add a top-level `rope_theta` beside `rope_parameters` in folder/config.json, so 4.x users get the same theta."""
    path = Path(folder) / "config.json"
    config = json.loads(path.read_text())
    params = config.get("rope_parameters") or {}
    theta = params.get("rope_theta", config.get("rope_theta"))
    if theta is None:
        raise ValueError(f"{path}: no rope theta in rope_parameters or rope_theta")
    config["rope_theta"] = theta
    config["rope_parameters"] = {"rope_type": "default", **params, "rope_theta": theta}
    write_json(path, config, sort_keys=True)
