"""The architecture both formats describe and where each tensor lives in them.

Meta's params.json and HF's LlamaConfig are two spellings of one shape (`LlamaShape`). Meta's model-parallel shards
split column-parallel weights (wq, wk, wv, w1, w3, output) along their rows and row-parallel weights (wo, w2) and the
ParallelEmbedding along their columns (fairscale's layers, as used by Meta's llama/model.py); `weights` lists every
tensor with its HF name, Meta name and split axis. Meta's rotary embedding rotates interleaved pairs of each head,
transformers' the two halves, so wq/wk rows are permuted per head (the permutation of transformers'
convert_llama_weights_to_hf.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from codellama_hf.io import torch_dtype
from codellama_hf.models import LLAMA2_THETA, rope_theta, set_rope_theta

SAFETENSORS_DTYPES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}
DTYPES_FROM_SAFETENSORS = {name: dtype for dtype, name in SAFETENSORS_DTYPES.items()}
# Fields of Meta's ModelArgs (llama/model.py); max_batch_size and max_seq_len are runtime settings, not weights.
_PARAM_FIELDS = {
    "dim",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "vocab_size",
    "multiple_of",
    "ffn_dim_multiplier",
    "norm_eps",
    "rope_theta",
    "max_batch_size",
    "max_seq_len",
}


def ffn_hidden_size(dim: int, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
    """Meta's FeedForward rule: 2/3 of 4*dim, times the multiplier, rounded up to a multiple of `multiple_of`."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


@dataclass(frozen=True)
class LlamaShape:
    """The architecture both formats describe: Meta's params.json and HF's LlamaConfig are two spellings of it."""

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    vocab_size: int
    norm_eps: float
    rope_theta: float

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @classmethod
    def from_params(cls, params: dict, vocab_size: int, path: Path) -> LlamaShape:
        """Read params.json (vocab_size there may be absent or -1: Meta takes it from the tokenizer)."""
        unknown = sorted(set(params) - _PARAM_FIELDS)
        if unknown:
            raise ValueError(f"{path}: unknown fields {unknown}; only Llama 2 / Code Llama params.json are supported")
        missing = [key for key in ("dim", "n_layers", "n_heads") if key not in params]
        if missing:
            raise ValueError(f"{path}: missing required fields {missing}")
        for key in ("dim", "n_layers", "n_heads", "n_kv_heads", "multiple_of"):
            value = params.get(key, 1)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"{path}: {key} must be a positive integer, got {value!r}")
        if not isinstance(params.get("ffn_dim_multiplier") or 1.0, (int, float)):
            raise ValueError(f"{path}: ffn_dim_multiplier must be a number, got {params['ffn_dim_multiplier']!r}")
        n_kv_heads = params.get("n_kv_heads") or params["n_heads"]
        ffn = ffn_hidden_size(params["dim"], params.get("multiple_of", 256), params.get("ffn_dim_multiplier"))
        shape = cls(
            dim=params["dim"],
            n_layers=params["n_layers"],
            n_heads=params["n_heads"],
            n_kv_heads=n_kv_heads,
            ffn_dim=ffn,
            vocab_size=vocab_size,
            norm_eps=float(params.get("norm_eps", 1e-5)),
            rope_theta=float(params.get("rope_theta", LLAMA2_THETA)),
        )
        shape.check(path)
        declared = params.get("vocab_size", -1)
        if declared not in (None, -1) and declared != vocab_size:
            raise ValueError(f"{path}: vocab_size is {declared} but the weights have {vocab_size} rows")
        return shape

    @classmethod
    def from_hf_config(cls, config, path: Path) -> LlamaShape:
        """Read a LlamaConfig, refusing features Meta's format cannot express."""
        if config.model_type != "llama":
            raise ValueError(f"{path}: model_type is {config.model_type!r}; only 'llama' models can be converted")
        rope_type = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
        problems = {
            "rope_parameters.rope_type": (rope_type, "default"),
            "hidden_act": (config.hidden_act, "silu"),
            "attention_bias": (getattr(config, "attention_bias", False), False),
            "mlp_bias": (getattr(config, "mlp_bias", False), False),
            "head_dim": (
                getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
                config.hidden_size // config.num_attention_heads,
            ),
        }
        for field, (got, needed) in problems.items():
            if got != needed:
                raise ValueError(f"{path}: {field} is {got!r}; Meta's Llama format needs {needed!r}")
        shape = cls(
            dim=config.hidden_size,
            n_layers=config.num_hidden_layers,
            n_heads=config.num_attention_heads,
            n_kv_heads=config.num_key_value_heads or config.num_attention_heads,
            ffn_dim=config.intermediate_size,
            vocab_size=config.vocab_size,
            norm_eps=config.rms_norm_eps,
            rope_theta=rope_theta(config),
        )
        shape.check(path)
        return shape

    def check(self, path: Path) -> None:
        for field in ("dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "vocab_size"):
            value = getattr(self, field)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{path}: {field} must be a positive integer, got {value!r}")
        if self.dim % self.n_heads or self.head_dim % 2:
            raise ValueError(f"{path}: dim {self.dim} must split into {self.n_heads} heads of even size")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"{path}: n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")

    def check_shards(self, n: int, path: Path) -> None:
        """Model parallelism splits whole heads, FFN columns, embedding columns and vocabulary rows n ways."""
        for field, value in (
            ("n_heads", self.n_heads),
            ("n_kv_heads", self.n_kv_heads),
            ("dim", self.dim),
            ("ffn_dim", self.ffn_dim),
            ("vocab_size", self.vocab_size),
        ):
            if value % n:
                raise ValueError(f"{path}: {field}={value} cannot be split across {n} model-parallel shards")

    def params_json(self) -> dict:
        """Meta's params.json; rope_theta only when it differs from Llama 2's (Llama 2's ModelArgs lacks it)."""
        multiple_of, multiplier = _meta_ffn_params(self.dim, self.ffn_dim)
        params = dict(
            dim=self.dim,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            n_kv_heads=self.n_kv_heads,
            vocab_size=self.vocab_size,
            multiple_of=multiple_of,
            norm_eps=self.norm_eps,
        )
        if multiplier is not None:
            params["ffn_dim_multiplier"] = multiplier
        if self.rope_theta != LLAMA2_THETA:
            params["rope_theta"] = self.rope_theta
        return params

    def hf_config(self, dtype: torch.dtype, max_position_embeddings: int | None, bos_token_id: int, eos_token_id: int):
        """LlamaConfig with Llama 2 conventions; context 16384 for Code Llama's theta, 4096 for Llama 2's."""
        from transformers import LlamaConfig

        if max_position_embeddings is None:
            max_position_embeddings = 16384 if self.rope_theta > LLAMA2_THETA else 4096
        config = LlamaConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.dim,
            intermediate_size=self.ffn_dim,
            num_hidden_layers=self.n_layers,
            num_attention_heads=self.n_heads,
            num_key_value_heads=self.n_kv_heads,
            rms_norm_eps=self.norm_eps,
            hidden_act="silu",
            tie_word_embeddings=False,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            architectures=["LlamaForCausalLM"],
        )
        set_rope_theta(config, self.rope_theta, max_position_embeddings=max_position_embeddings)
        config.dtype = dtype
        return config


def _meta_ffn_params(dim: int, ffn_dim: int) -> tuple[int, float | None]:
    """(multiple_of, ffn_dim_multiplier) that reproduce `ffn_dim` under Meta's rule, preferring Meta's own values."""
    base = int(2 * (4 * dim) / 3)
    for multiplier in (None, ffn_dim / base, (ffn_dim + 0.5) / base):
        for multiple_of in (256, 128, 64, 32, 16, 8, 4, 2, 1):
            if ffn_hidden_size(dim, multiple_of, multiplier) == ffn_dim:
                return multiple_of, multiplier
    raise ValueError(f"intermediate_size {ffn_dim} cannot be expressed with Meta's FFN rule for dim {dim}")


@dataclass(frozen=True)
class Weight:
    """One tensor: its names in both formats, its full shape, how model parallelism splits it, rotary layout."""

    meta: str
    hf: str
    shape: tuple[int, ...]
    split: int | None  # 0: rows (column-parallel), 1: columns (row-parallel, embedding), None: replicated
    rotary: bool = False

    def shard_shape(self, n: int) -> tuple[int, ...]:
        if self.split is None:
            return self.shape
        shape = list(self.shape)
        shape[self.split] //= n
        return tuple(shape)


def weights(shape: LlamaShape) -> list[Weight]:
    """All tensors of the model, in the order of Meta's state dict."""
    d, ffn = shape.dim, shape.ffn_dim
    q, kv = shape.n_heads * shape.head_dim, shape.n_kv_heads * shape.head_dim
    out = [Weight("tok_embeddings.weight", "model.embed_tokens.weight", (shape.vocab_size, d), 1)]
    for i in range(shape.n_layers):
        m, h = f"layers.{i}.", f"model.layers.{i}."
        out += [
            Weight(m + "attention.wq.weight", h + "self_attn.q_proj.weight", (q, d), 0, rotary=True),
            Weight(m + "attention.wk.weight", h + "self_attn.k_proj.weight", (kv, d), 0, rotary=True),
            Weight(m + "attention.wv.weight", h + "self_attn.v_proj.weight", (kv, d), 0),
            Weight(m + "attention.wo.weight", h + "self_attn.o_proj.weight", (d, q), 1),
            Weight(m + "feed_forward.w1.weight", h + "mlp.gate_proj.weight", (ffn, d), 0),
            Weight(m + "feed_forward.w2.weight", h + "mlp.down_proj.weight", (d, ffn), 1),
            Weight(m + "feed_forward.w3.weight", h + "mlp.up_proj.weight", (ffn, d), 0),
            Weight(m + "attention_norm.weight", h + "input_layernorm.weight", (d,), None),
            Weight(m + "ffn_norm.weight", h + "post_attention_layernorm.weight", (d,), None),
        ]
    return out + [
        Weight("norm.weight", "model.norm.weight", (d,), None),
        Weight("output.weight", "lm_head.weight", (shape.vocab_size, d), 0),
    ]


def meta_to_hf_rotary(rows: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Whole heads of wq/wk from Meta's interleaved pairs (x0,y0,x1,y1..) to HF's halves (x0,x1..,y0,y1..)."""
    return meta_to_hf_rotary_view(rows, head_dim).reshape(rows.shape)


def meta_to_hf_rotary_view(rows: torch.Tensor, head_dim: int) -> torch.Tensor:
    """The same permutation as a strided view (heads, 2, head_dim / 2, cols), copied out only when written."""
    n, cols = rows.shape
    return rows.view(n // head_dim, head_dim // 2, 2, cols).transpose(1, 2)


def hf_to_meta_rotary(rows: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Inverse of `meta_to_hf_rotary`."""
    n, cols = rows.shape
    return rows.view(n // head_dim, 2, head_dim // 2, cols).transpose(1, 2).reshape(n, cols)


def short_list(names: list[str]) -> str:
    return f"{names[:5]}{' ...' if len(names) > 5 else ''}"


def resolve_dtype(dtype: str | torch.dtype | None, source: torch.dtype) -> torch.dtype:
    return source if dtype is None else torch_dtype(dtype, auto=source)
