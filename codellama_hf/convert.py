"""Checkpoint conversion between Meta's `consolidated.NN.pth` format and Hugging Face safetensors, streamed.

Meta distributes Llama 2 and Code Llama as model-parallel shards (fairscale layers, codellama.md §1.5-1.6):
column-parallel weights (wq, wk, wv, w1, w3, output) are split along their rows, row-parallel weights (wo, w2)
and the ParallelEmbedding (tok_embeddings) along their columns, and the RMSNorm weights are replicated. Meta's
rotary embedding rotates interleaved pairs of each head (complex numbers); transformers rotates the two halves of
the head, so the rows of wq and wk are permuted per head (the same permutation transformers' converter applies).

Unlike transformers' convert_llama_weights_to_hf.py, which holds every shard in RAM (codellama.md §2.3), we never
hold a whole tensor: shards are opened with `torch.load(mmap=True, weights_only=True)`; bytes that pass unchanged
(most of a bf16 -> bf16 conversion) are copied file to file in the kernel, as `cp` does; the rest (rotary
permutation of wq/wk, column-split merges, dtype changes) is merged a block of rows at a time; each tensor's
mapped pages are dropped from the process once written. Every tensor record is checked against the CRC-32 stored
in the .pth zip (in a thread, one tensor ahead), so a corrupted download is reported rather than converted.
Output is written into a temporary folder and renamed on success.

The reverse direction writes .pth files that are byte-for-byte what `torch.save` writes for the same state dict,
one tensor at a time, so Meta's own `Llama.build` and Meta-format tools run our models.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import io
import json
import logging
import math
import mmap
import os
import pickle
import re
import shutil
import struct
import sys
import time
import zipfile
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from huggingface_hub import split_state_dict_into_shards_factory
from tqdm.auto import tqdm

from codellama_hf.io import DTYPE_NAMES, atomic_dir, read_json_object, refuse_existing, torch_dtype
from codellama_hf.models import LLAMA2_THETA, rope_theta, set_rope_theta, write_config_with_both_rope_keys
from codellama_hf.tokenizer import INFILLING_PIECES, SENTINELS, add_infilling_pieces, load_sp_model, save_tokenizer

try:  # ISA-L's CRC-32 runs at memory speed (about 15 GB/s here, zlib's about 3): the check then costs little
    from isal.isal_zlib import crc32
except ImportError:
    from zlib import crc32

logger = logging.getLogger(__name__)

_SAFETENSORS_DTYPES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}
_DTYPES_FROM_SAFETENSORS = {name: dtype for dtype, name in _SAFETENSORS_DTYPES.items()}
_STORAGE_TYPES = {torch.bfloat16: "BFloat16Storage", torch.float16: "HalfStorage", torch.float32: "FloatStorage"}
_SHARD_NAME = re.compile(r"consolidated\.(\d+)\.pth")
_BLOCK_BYTES = 64 << 20  # rows are merged and written in blocks of about this size
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
_VOCAB_TENSORS = ("model.embed_tokens.weight", "lm_head.weight")
_IGNORED_META_KEYS = {"rope.freqs"}  # a legacy buffer in Llama checkpoints; Meta's code loads with strict=False


# ---------------------------------------------------------------------------------------------------------------
# Architecture and tensor layout
# ---------------------------------------------------------------------------------------------------------------


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
class _Weight:
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


def weights(shape: LlamaShape) -> list[_Weight]:
    """All tensors of the model, in the order of Meta's state dict."""
    d, ffn = shape.dim, shape.ffn_dim
    q, kv = shape.n_heads * shape.head_dim, shape.n_kv_heads * shape.head_dim
    out = [_Weight("tok_embeddings.weight", "model.embed_tokens.weight", (shape.vocab_size, d), 1)]
    for i in range(shape.n_layers):
        m, h = f"layers.{i}.", f"model.layers.{i}."
        out += [
            _Weight(m + "attention.wq.weight", h + "self_attn.q_proj.weight", (q, d), 0, rotary=True),
            _Weight(m + "attention.wk.weight", h + "self_attn.k_proj.weight", (kv, d), 0, rotary=True),
            _Weight(m + "attention.wv.weight", h + "self_attn.v_proj.weight", (kv, d), 0),
            _Weight(m + "attention.wo.weight", h + "self_attn.o_proj.weight", (d, q), 1),
            _Weight(m + "feed_forward.w1.weight", h + "mlp.gate_proj.weight", (ffn, d), 0),
            _Weight(m + "feed_forward.w2.weight", h + "mlp.down_proj.weight", (d, ffn), 1),
            _Weight(m + "feed_forward.w3.weight", h + "mlp.up_proj.weight", (ffn, d), 0),
            _Weight(m + "attention_norm.weight", h + "input_layernorm.weight", (d,), None),
            _Weight(m + "ffn_norm.weight", h + "post_attention_layernorm.weight", (d,), None),
        ]
    return out + [
        _Weight("norm.weight", "model.norm.weight", (d,), None),
        _Weight("output.weight", "lm_head.weight", (shape.vocab_size, d), 0),
    ]


def meta_to_hf_rotary(rows: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Whole heads of wq/wk from Meta's interleaved pairs (x0,y0,x1,y1..) to HF's halves (x0,x1..,y0,y1..)."""
    return _meta_to_hf_rotary_view(rows, head_dim).reshape(rows.shape)


def _meta_to_hf_rotary_view(rows: torch.Tensor, head_dim: int) -> torch.Tensor:
    """The same permutation as a strided view (heads, 2, head_dim / 2, cols), copied out only when written."""
    n, cols = rows.shape
    return rows.view(n // head_dim, head_dim // 2, 2, cols).transpose(1, 2)


def hf_to_meta_rotary(rows: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Inverse of `meta_to_hf_rotary`."""
    n, cols = rows.shape
    return rows.view(n // head_dim, 2, head_dim // 2, cols).transpose(1, 2).reshape(n, cols)


# ---------------------------------------------------------------------------------------------------------------
# Reading Meta shards
# ---------------------------------------------------------------------------------------------------------------

_LIBC = ctypes.CDLL(None) if sys.platform.startswith("linux") else None


def _release_pages(tensor: torch.Tensor) -> None:
    """Drop an mmap-loaded tensor's pages from this process; re-reading them faults them back in from the file.

    Without this, every tensor already converted stays in the process's resident set until the shard is closed,
    so converting a 13 GB checkpoint would look (and be accounted) like holding 13 GB.
    """
    nbytes = tensor.numel() * tensor.element_size()
    if _LIBC is None or nbytes == 0:
        return
    start = tensor.data_ptr() // mmap.PAGESIZE * mmap.PAGESIZE
    length = tensor.data_ptr() + nbytes - start
    _LIBC.madvise(ctypes.c_void_p(start), ctypes.c_size_t(length), mmap.MADV_DONTNEED)


@dataclass(frozen=True)
class _FileSpan:
    """Bytes that go to the output unchanged: copied file to file in the kernel, as cp does, never through Python.
    `tensor` maps the same bytes, for a fallback write and for row means."""

    path: Path
    offset: int
    tensor: torch.Tensor

    @property
    def nbytes(self) -> int:
        return self.tensor.numel() * self.tensor.element_size()


class MetaShard:
    """One consolidated.NN.pth, memory-mapped, with every tensor record checked against its zip CRC-32 on use."""

    def __init__(self, path: Path):
        self.path = path
        try:
            tensors = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:  # torch raises RuntimeError/UnpicklingError/EOFError for damaged archives
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ValueError(
                f"{path}: cannot be read ({reason}); the file is truncated or corrupted: download it "
                "again (Meta's checklist.chk has its md5)"
            ) from None
        if not isinstance(tensors, dict) or not all(isinstance(t, torch.Tensor) for t in tensors.values()):
            raise ValueError(f"{path}: expected a state dict of tensors, got {type(tensors).__name__}")
        self.tensors: dict[str, torch.Tensor] = tensors
        self._base, self._crc = self._record_crcs()
        self._verified: set[int] = set()

    def _record_crcs(self) -> tuple[int, dict[int, int]]:
        """The mapping's base address and the CRC-32 of each storage by address: torch maps the whole file at one
        base, so zip records and storages sorted by position pair up one to one."""
        records, tensors = [], self.tensors.values()
        try:
            with zipfile.ZipFile(self.path) as archive, open(self.path, "rb") as f:
                for info in archive.infolist():
                    if re.fullmatch(r"[^/]+/data/\d+", info.filename):
                        f.seek(info.header_offset + 26)  # local header: name and extra field lengths
                        name_len, extra_len = struct.unpack("<HH", f.read(4))
                        records.append((info.header_offset + 30 + name_len + extra_len, info.file_size, info.CRC))
        except (zipfile.BadZipFile, struct.error) as err:
            raise ValueError(f"{self.path}: damaged zip directory ({err}); the file is corrupted") from None
        storages = sorted({(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) for t in tensors})
        records.sort()
        base = storages[0][0] - records[0][0] if storages and records else 0
        if len(storages) != len(records) or any(
            ptr - base != offset or nbytes != size
            for (ptr, nbytes), (offset, size, _) in zip(storages, records, strict=False)
        ):
            raise ValueError(f"{self.path}: its tensor records do not match its zip directory; the file is corrupted")
        return base, {ptr: crc for (ptr, _), (_, _, crc) in zip(storages, records, strict=False)}

    def verify(self, name: str) -> None:
        """Check the bytes of tensor `name` against the archive's CRC-32, a block at a time, dropping each block's
        pages after, so that the check never holds a whole tensor resident."""
        storage = self.tensors[name].untyped_storage()
        if storage.data_ptr() in self._verified:
            return
        data = torch.empty(0, dtype=torch.uint8).set_(storage)
        crc = 0
        for start in range(0, data.numel(), _BLOCK_BYTES):
            block = data[start : start + _BLOCK_BYTES]
            crc = crc32(block.numpy(), crc)
            _release_pages(block)
        if crc != self._crc[storage.data_ptr()]:
            raise ValueError(
                f"{self.path}: tensor {name!r} fails its CRC-32 check; the file is corrupted: download it again"
            )
        self._verified.add(storage.data_ptr())

    def span(self, tensor: torch.Tensor) -> _FileSpan:
        """Where a contiguous tensor of this shard lies in the file."""
        return _FileSpan(self.path, tensor.data_ptr() - self._base, tensor)

    def release(self, name: str) -> None:
        _release_pages(self.tensors[name])


def find_shards(input_dir: Path) -> list[Path]:
    """consolidated.00.pth ... consolidated.NN.pth, contiguous from 00."""
    found = {}
    for path in input_dir.iterdir():
        match = _SHARD_NAME.fullmatch(path.name)
        if match:
            found[int(match.group(1))] = path
    if not found:
        raise FileNotFoundError(f"{input_dir}: no consolidated.NN.pth files (is this a Meta checkpoint folder?)")
    missing = [f"consolidated.{i:02d}.pth" for i in range(max(found) + 1) if i not in found]
    if missing:
        raise FileNotFoundError(f"{input_dir}: shard(s) {', '.join(missing)} missing (found {len(found)} shards)")
    return [found[i] for i in sorted(found)]


def _listed(names: list[str]) -> str:
    return f"{names[:5]}{' ...' if len(names) > 5 else ''}"


class MetaCheckpoint:
    """A Meta checkpoint folder, validated up front: params.json against every shard's keys, shapes and dtypes."""

    def __init__(self, folder: Path):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such folder")
        self.folder, self.params_path = folder, folder / "params.json"
        params = read_json_object(self.params_path)
        self.shards = [MetaShard(path) for path in find_shards(folder)]
        first = self.shards[0]
        self._check_shard_count(params)
        embeddings = first.tensors.get("tok_embeddings.weight")
        if embeddings is None or embeddings.ndim != 2:
            raise ValueError(f"{first.path}: no 2-D tok_embeddings.weight; not a Llama checkpoint")
        self.dtype = embeddings.dtype
        self.shape = LlamaShape.from_params(params, vocab_size=embeddings.shape[0], path=self.params_path)
        self.shape.check_shards(len(self.shards), self.params_path)
        self.layout = weights(self.shape)
        self._staging = torch.empty(0, dtype=torch.uint8)
        for shard in self.shards:
            self._check_shard(shard)

    def _check_shard_count(self, params: dict) -> None:
        """Shard 00's wq rows tell how many ways tensors are split, which tells missing from extra files."""
        wq, n = self.shards[0].tensors.get("layers.0.attention.wq.weight"), len(self.shards)
        dim = params.get("dim")
        if wq is None or wq.ndim != 2 or not wq.shape[0] or not isinstance(dim, int) or dim % wq.shape[0]:
            return  # the per-shard shape check reports it
        ways = dim // wq.shape[0]
        found = f"{self.shards[0].path.name} holds 1/{ways} of each split tensor but there are {n} shard files"
        if ways < n:
            raise ValueError(f"{self.folder}: {found}: consolidated.{ways:02d}.pth onward are extra")
        if ways > n:
            missing = ", ".join(f"consolidated.{i:02d}.pth" for i in range(n, ways))
            raise FileNotFoundError(f"{self.folder}: {found}: {missing} missing")

    def _check_shard(self, shard: MetaShard) -> None:
        keys, expected, n = set(shard.tensors), {w.meta for w in self.layout}, len(self.shards)
        unknown = sorted(keys - expected - _IGNORED_META_KEYS)
        if unknown:
            raise ValueError(
                f"{shard.path}: unknown tensors {_listed(unknown)}; only Llama 2 / Code Llama "
                "checkpoints are supported"
            )
        missing = sorted(expected - keys)
        if missing:
            raise ValueError(
                f"{shard.path}: missing tensors {_listed(missing)} (params.json says n_layers={self.shape.n_layers})"
            )
        s = self.shape
        for w in self.layout:
            tensor = shard.tensors[w.meta]
            if tuple(tensor.shape) != w.shard_shape(n):
                raise ValueError(
                    f"{shard.path}: {w.meta} has shape {tuple(tensor.shape)} but params.json "
                    f"(dim={s.dim}, n_heads={s.n_heads}, n_kv_heads={s.n_kv_heads}, ffn {s.ffn_dim}, "
                    f"vocab {s.vocab_size}) over {n} shard(s) gives {w.shard_shape(n)}"
                )
            if tensor.dtype not in _SAFETENSORS_DTYPES:
                raise ValueError(f"{shard.path}: {w.meta} has dtype {tensor.dtype}; expected bfloat16/float16/float32")

    def stream(self, order: list[_Weight], dtype: torch.dtype) -> Iterator[Iterator[torch.Tensor | _FileSpan]]:
        """`merged` for each weight in turn, CRC-checking the next weight in a thread meanwhile (the check costs
        about as much as the copy, and both release the GIL)."""

        def verify(w: _Weight) -> None:
            for shard in self.shards:
                shard.verify(w.meta)

        with ThreadPoolExecutor(max_workers=1) as pool:
            checked = pool.submit(verify, order[0]) if order else None
            for i, w in enumerate(order):
                checked.result()
                if i + 1 < len(order):
                    checked = pool.submit(verify, order[i + 1])
                yield self.merged(w, dtype)

    def merged(self, w: _Weight, dtype: torch.dtype) -> Iterator[torch.Tensor | _FileSpan]:
        """The merged HF tensor in order: spans of the shard files where bytes pass unchanged, otherwise blocks of
        rows (rotary permutation, column merge, dtype change). The shards' pages are dropped after."""
        sources = [shard.tensors[w.meta] for shard in self.shards]
        head_dim = self.shape.head_dim
        if w.split is None:
            for shard, source in zip(self.shards[1:], sources[1:], strict=False):
                if not torch.equal(source, sources[0]):
                    raise ValueError(
                        f"{shard.path}: replicated tensor {w.meta} differs from {self.shards[0].path.name}'s"
                    )
            sources = sources[:1]
        unchanged = all(s.dtype == dtype and s.is_contiguous() for s in sources)
        if unchanged and not w.rotary and (w.split != 1 or len(sources) == 1):
            for shard, source in zip(
                self.shards, sources, strict=False
            ):  # row-wise concatenation is byte concatenation
                yield shard.span(source)
        elif w.split == 1:
            step = _block_rows(sources[0], 1, ways=len(sources))
            for start in range(0, sources[0].shape[0], step):
                parts = [source[start : start + step] for source in sources]
                yield self._staged(parts, dtype)
                for part in parts:
                    _release_pages(part)
        else:
            step = _block_rows(sources[0], head_dim if w.rotary else 1)
            for source in sources:
                for start in range(0, source.shape[0], step):
                    block = source[start : start + step]
                    yield self._staged([_meta_to_hf_rotary_view(block, head_dim) if w.rotary else block], dtype)
                    _release_pages(block)
        for shard in self.shards:
            shard.release(w.meta)

    def _staged(self, parts: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        """`parts` side by side along the last dimension, contiguous, in `dtype`, in a buffer reused from block
        to block: the permutation, the column merge and the cast are one copy, into memory already mapped (fresh
        memory for every block costs page faults and zeroing). Valid until the next block."""
        shape = (*parts[0].shape[:-1], sum(p.shape[-1] for p in parts))
        nbytes = math.prod(shape) * dtype.itemsize
        if self._staging.numel() < nbytes:
            self._staging = torch.empty(nbytes, dtype=torch.uint8)
        out, column = self._staging[:nbytes].view(dtype).view(shape), 0
        for part in parts:
            out[..., column : column + part.shape[-1]].copy_(part)
            column += part.shape[-1]
        return out


def _block_rows(source: torch.Tensor, multiple: int, ways: int = 1) -> int:
    """Rows per block: about _BLOCK_BYTES of output, a multiple of `multiple` (whole heads for wq/wk)."""
    row_bytes = source[0].numel() * source.element_size() * ways
    return max(multiple, _BLOCK_BYTES // row_bytes // multiple * multiple)


# ---------------------------------------------------------------------------------------------------------------
# Streaming writers
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _raw(tensor: torch.Tensor):
    """A tensor's bytes as a flat buffer for file.write, without a copy when it is already contiguous."""
    return tensor.contiguous().view(-1).view(torch.uint8).numpy()


class _SafetensorsWriter:
    """Writes one .safetensors file tensor by tensor, block by block.

    The safetensors package only serializes tensors that are all in memory at once; the format itself is a JSON
    header with every tensor's offsets followed by the raw bytes, so knowing the shapes up front is enough.
    """

    def __init__(self, path: Path, entries: list[_Entry]):
        header: dict = {"__metadata__": {"format": "pt"}}
        offset = 0
        for e in entries:
            header[e.name] = {
                "dtype": _SAFETENSORS_DTYPES[e.dtype],
                "shape": list(e.shape),
                "data_offsets": [offset, offset + e.nbytes],
            }
            offset += e.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # tensor data starts 8-byte aligned, as safetensors itself writes
        self.path, self._pending, self._header = path, list(entries), struct.pack("<Q", len(raw)) + raw

    def __enter__(self) -> _SafetensorsWriter:
        self._file = open(self.path, "wb", buffering=0)  # closed in __exit__
        _write_all(self._file, self._header)
        return self

    def write(self, name: str, blocks: Iterable[torch.Tensor | _FileSpan], progress: tqdm) -> None:
        entry = self._pending.pop(0)
        if entry.name != name:
            raise RuntimeError(f"{self.path}: expected tensor {entry.name}, got {name}")
        written = 0
        for block in blocks:
            if isinstance(block, _FileSpan):
                n = _copy_span(block, self._file)
            else:
                n = _write_all(self._file, _raw(block.to(entry.dtype)))
            written += n
            progress.update(n)
        if written != entry.nbytes:
            raise RuntimeError(f"{self.path}: {name} produced {written} bytes, expected {entry.nbytes}")

    def __exit__(self, exc_type, exc, tb) -> None:
        self._file.close()
        if exc_type is None and self._pending:
            raise RuntimeError(f"{self.path}: tensors {[e.name for e in self._pending]} were not written")


def _write_all(file: io.FileIO, data) -> int:
    """Write a buffer in 4 MiB pieces: single writes of tens of MB measured several times slower here."""
    view = memoryview(data).cast("B")
    done = 0
    while done < len(view):
        done += file.write(view[done : done + (4 << 20)])
    return done


def _copy_span(span: _FileSpan, file: io.FileIO) -> int:
    """os.copy_file_range where the OS has it (Linux), else an ordinary write of the mapped bytes."""
    done = 0
    with open(span.path, "rb") as source, contextlib.suppress(AttributeError, OSError):
        while done < span.nbytes:
            copied = os.copy_file_range(source.fileno(), file.fileno(), span.nbytes - done, span.offset + done)
            if copied == 0:
                break
            done += copied
    if done < span.nbytes:
        done += _write_all(file, _raw(span.tensor)[done:])
    return done


class _StorageRef:
    def __init__(self, key: str, dtype: torch.dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel


class _TensorRef:
    """Pickles exactly as torch.save pickles a contiguous CPU tensor, without the data."""

    def __init__(self, storage: _StorageRef, shape: tuple[int, ...]):
        self.storage, self.shape = storage, shape

    def __reduce_ex__(self, protocol):
        stride = tuple(math.prod(self.shape[i + 1 :]) for i in range(len(self.shape)))
        return torch._utils._rebuild_tensor_v2, (self.storage, 0, self.shape, stride, False, OrderedDict())


class _StatePickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _StorageRef):
            return ("storage", getattr(torch, _STORAGE_TYPES[obj.dtype]), obj.key, "cpu", obj.numel)
        return None


def write_pth(path: Path, entries: list[_Entry], tensors: Iterable[torch.Tensor], progress: tqdm) -> None:
    """Write a state dict as torch.save would, with only one tensor in memory at a time.

    torch.save pickles the dict first and then copies each storage into its zip record; we pickle references
    with the same layout and stream the records through torch's own zip writer (so CRCs and alignment match).
    """
    refs = {
        e.name: _TensorRef(_StorageRef(str(i), e.dtype, math.prod(e.shape)), e.shape) for i, e in enumerate(entries)
    }
    buffer = io.BytesIO()
    _StatePickler(buffer, protocol=2).dump(refs)
    pkl = buffer.getvalue()
    alignment = str(torch.serialization._get_storage_alignment())
    with torch.serialization._open_zipfile_writer(str(path)) as archive:
        archive.write_record("data.pkl", pkl, len(pkl))
        archive.write_record(".format_version", "1", 1)
        archive.write_record(".storage_alignment", alignment, len(alignment))
        archive.write_record("byteorder", sys.byteorder, len(sys.byteorder))
        for i, (entry, tensor) in enumerate(zip(entries, tensors, strict=True)):
            if tensor.dtype != entry.dtype or tuple(tensor.shape) != entry.shape:
                raise RuntimeError(f"{path}: {entry.name} is {tensor.dtype}{tuple(tensor.shape)}, planned {entry}")
            tensor = tensor.contiguous()
            start = tensor.storage_offset() * tensor.element_size()  # a view shares its storage (e.g. a mapped file)
            archive.write_record(f"data/{i}", tensor.untyped_storage()[start : start + entry.nbytes], entry.nbytes)
            progress.update(entry.nbytes)


def _progress(total: int, desc: str, enabled: bool) -> tqdm:
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, disable=not enabled)


def _resolve_dtype(dtype: str | torch.dtype | None, source: torch.dtype) -> torch.dtype:
    return source if dtype is None else torch_dtype(dtype, auto=source)


# ---------------------------------------------------------------------------------------------------------------
# Meta -> HF
# ---------------------------------------------------------------------------------------------------------------


def _find_tokenizer_model(input_dir: Path, tokenizer_model: str | os.PathLike | None) -> Path:
    """Code Llama folders hold tokenizer.model; Llama 2 downloads keep one beside the model folders."""
    if tokenizer_model is not None:
        path = Path(tokenizer_model)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: tokenizer model not found")
        return path
    for path in (input_dir / "tokenizer.model", input_dir.parent / "tokenizer.model"):
        if path.is_file():
            return path
    raise FileNotFoundError(f"{input_dir}: no tokenizer.model here or in its parent folder; pass --tokenizer")


def _meta_vocabulary(tok_path: Path, rows: int, extend_vocab: bool):
    """The SentencePiece model to ship, checked against the weights' vocabulary (`rows`)."""
    proto = load_sp_model(tok_path)
    pieces = [p.piece for p in proto.pieces]
    extended = pieces[-len(INFILLING_PIECES) :] == list(INFILLING_PIECES)
    if not extend_vocab:
        if len(pieces) == rows:
            return proto
        hint = ""
        if extended and len(pieces) == rows + len(INFILLING_PIECES):
            hint = (
                " This is a Code Llama tokenizer with infilling pieces: pass --extend-vocab to grow the weights "
                "for it, or use the model's own tokenizer.model."
            )
        raise ValueError(f"{tok_path} has {len(pieces)} pieces but the weights have {rows} vocabulary rows.{hint}")
    if any(s in pieces for s in SENTINELS) and not extended:
        raise ValueError(f"{tok_path}: infilling pieces present but not at the end; cannot extend this vocabulary")
    if extended and len(pieces) == rows:
        raise ValueError(f"the weights already cover {tok_path}'s infilling pieces ({rows} rows): drop --extend-vocab")
    if extended and len(pieces) == rows + len(INFILLING_PIECES):
        return proto
    if not extended and len(pieces) == rows:
        return add_infilling_pieces(proto)
    raise ValueError(
        f"{tok_path} has {len(pieces)} pieces but the weights have {rows} vocabulary rows; "
        "--extend-vocab needs the base tokenizer (same size as the weights)"
    )


def meta_to_hf(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    dtype: str | torch.dtype = "bfloat16",
    extend_vocab: bool = False,
    tokenizer_model: str | os.PathLike | None = None,
    max_shard_size: int | str = "5GB",
    max_position_embeddings: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Convert a Meta checkpoint folder (consolidated.NN.pth + params.json + tokenizer.model) to a HF folder.

    dtype: "bfloat16" (default, Meta's training dtype), "float16", "float32" or "auto" (keep the checkpoint's).
    extend_vocab: Llama 2 -> Code Llama 7B/13B initialisation. The tokenizer gets Code Llama's 16 infilling pieces
        and tok_embeddings/output grow by 16 rows, each new row the mean of the existing rows (computed in float32).
        Mean rows keep the model's behaviour: a new token's logit is the average of the other logits, so the new
        tokens start with ordinary, not dominant, probability (unlike zero rows for embeddings, which give an
        out-of-distribution input, or random rows, which give arbitrary logits); training then moves them apart.
    tokenizer_model: defaults to input_dir/tokenizer.model, then input_dir/../tokenizer.model (Llama 2's layout).
    max_position_embeddings: defaults to 16384 when rope_theta > 1e4 (Code Llama, as in Meta's HF release), else
        4096 (Llama 2).
    """
    started = time.monotonic()
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    refuse_existing(output_dir, overwrite)
    checkpoint = MetaCheckpoint(input_dir)
    shape = checkpoint.shape
    tok_path = _find_tokenizer_model(input_dir, tokenizer_model)
    proto = _meta_vocabulary(tok_path, shape.vocab_size, extend_vocab)
    extra_rows = len(proto.pieces) - shape.vocab_size
    out_shape = replace(shape, vocab_size=len(proto.pieces))
    target = _resolve_dtype(dtype, checkpoint.dtype)

    by_hf = {w.hf: w for w in checkpoint.layout}
    entries = {
        w.hf: _Entry(w.hf, target, (out_shape.vocab_size, shape.dim) if w.hf in _VOCAB_TENSORS else w.shape)
        for w in checkpoint.layout
    }
    split = split_state_dict_into_shards_factory(
        entries,
        get_storage_size=lambda e: e.nbytes,
        filename_pattern="model{suffix}.safetensors",
        max_shard_size=max_shard_size,
    )
    total = sum(e.nbytes for e in entries.values())
    order = [by_hf[name] for names in split.filename_to_tensors.values() for name in names]
    merged = checkpoint.stream(order, target)
    with (
        atomic_dir(output_dir, overwrite=overwrite) as tmp,
        _progress(total, "meta-to-hf", progress) as bar,
        ThreadPoolExecutor(max_workers=1) as side,
    ):
        # config, generation config and tokenizer files (building the BPE merges takes a while) meanwhile
        metadata = side.submit(_write_hf_metadata, tmp, out_shape, target, max_position_embeddings, proto)
        for filename, names in split.filename_to_tensors.items():
            with _SafetensorsWriter(tmp / filename, [entries[n] for n in names]) as writer:
                for name, blocks in zip(names, merged, strict=False):
                    if extra_rows and name in _VOCAB_TENSORS:
                        blocks = _with_mean_rows(blocks, extra_rows)
                    writer.write(name, blocks, bar)
        if split.is_sharded:
            parameters = sum(math.prod(e.shape) for e in entries.values())
            index = {
                "metadata": {"total_size": total, "total_parameters": parameters},
                "weight_map": split.tensor_to_filename,
            }
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        metadata.result()

    _log_summary(
        "meta-to-hf",
        output_dir,
        out_shape,
        target,
        len(checkpoint.shards),
        len(split.filename_to_tensors),
        total,
        started,
        extra_rows,
    )
    return output_dir


def _with_mean_rows(blocks: Iterable[torch.Tensor | _FileSpan], extra_rows: int) -> Iterator[torch.Tensor | _FileSpan]:
    """Pass the blocks through, then `extra_rows` copies of their mean row (accumulated in float32)."""
    total, count = None, 0
    for block in blocks:
        rows = block.tensor if isinstance(block, _FileSpan) else block
        row_sum = rows.sum(dim=0, dtype=torch.float32)
        total = row_sum if total is None else total + row_sum
        count += rows.shape[0]
        yield block
    yield (total / count).expand(extra_rows, -1)


def _write_hf_metadata(folder: Path, shape: LlamaShape, dtype: torch.dtype, max_positions: int | None, proto) -> None:
    from transformers import GenerationConfig

    config = shape.hf_config(dtype, max_positions, proto.trainer_spec.bos_id, proto.trainer_spec.eos_id)
    config.save_pretrained(folder)
    write_config_with_both_rope_keys(folder)
    GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id).save_pretrained(folder)
    tokenizer_dir = save_tokenizer(proto, folder / ".tokenizer")
    for path in tokenizer_dir.iterdir():
        os.replace(path, folder / path.name)
    tokenizer_dir.rmdir()


def _log_summary(
    direction: str,
    output: Path,
    shape: LlamaShape,
    dtype,
    shards_in: int,
    files_out: int,
    nbytes: int,
    started: float,
    extra_rows: int = 0,
) -> None:
    params = sum(math.prod(w.shape) for w in weights(shape))
    vocab = str(shape.vocab_size)
    if extra_rows:
        vocab += f" ({shape.vocab_size - extra_rows} + {extra_rows} infilling pieces)"
    logger.info(
        "%s: wrote %s in %.1f s\n  parameters %s (%.2f GB %s), vocab %s, rope theta %g\n"
        "  %d layers, dim %d, %d heads, %d kv heads, ffn %d; %d file(s) in, %d file(s) out",
        direction,
        output,
        time.monotonic() - started,
        f"{params:,}",
        nbytes / 1e9,
        str(dtype).removeprefix("torch."),
        vocab,
        shape.rope_theta,
        shape.n_layers,
        shape.dim,
        shape.n_heads,
        shape.n_kv_heads,
        shape.ffn_dim,
        shards_in,
        files_out,
    )


# ---------------------------------------------------------------------------------------------------------------
# HF -> Meta
# ---------------------------------------------------------------------------------------------------------------


class HFWeights:
    """Tensors of a HF folder's safetensors files, read one slice at a time (each read maps and unmaps its file)."""

    def __init__(self, folder: Path):
        from safetensors import safe_open

        self._safe_open = safe_open
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            weight_map = read_json_object(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise ValueError(f"{index}: no weight_map")
            self.files = {name: folder / filename for name, filename in weight_map.items()}
        elif (folder / "model.safetensors").is_file():
            self.files = dict.fromkeys(self._header(folder / "model.safetensors"), folder / "model.safetensors")
        else:
            raise FileNotFoundError(
                f"{folder}: no model.safetensors or model.safetensors.index.json "
                "(re-save the model with save_pretrained(safe_serialization=True))"
            )
        self.meta: dict[str, tuple[torch.dtype | None, tuple[int, ...]]] = {}
        for path in sorted(set(self.files.values())):
            if not path.is_file():
                raise FileNotFoundError(f"{path}: listed in the index but missing")
            self.meta.update(self._header(path))

    def _header(self, path: Path) -> dict[str, tuple[torch.dtype | None, tuple[int, ...]]]:
        """dtype and shape of every tensor in one file (None for dtypes Meta's format does not take)."""
        try:
            with self._safe_open(path, framework="pt") as f:
                parts = {name: f.get_slice(name) for name in f.keys()}  # noqa: SIM118 (safe_open is no dict)
                return {
                    name: (_DTYPES_FROM_SAFETENSORS.get(part.get_dtype()), tuple(part.get_shape()))
                    for name, part in parts.items()
                }
        except Exception as err:  # safetensors raises SafetensorError for damaged headers
            raise ValueError(f"{path}: not a readable safetensors file ({err})") from None

    def read(self, name: str, rows: slice = slice(None), cols: slice = slice(None)) -> torch.Tensor:
        with self._safe_open(self.files[name], framework="pt") as f:
            part = f.get_slice(name)
            return part[rows] if len(part.get_shape()) == 1 else part[rows, cols]


def _meta_part(w: _Weight, hf_name: str, source: HFWeights, n: int, s: int, head_dim: int) -> torch.Tensor:
    """Shard `s` of `n` of one tensor, in Meta's layout."""
    if w.split is None:
        return source.read(hf_name)
    size = w.shape[w.split] // n
    part = slice(s * size, (s + 1) * size)
    if w.split == 1:
        return source.read(hf_name, cols=part)
    rows = source.read(hf_name, rows=part)
    return hf_to_meta_rotary(rows, head_dim) if w.rotary else rows


def hf_to_meta(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    shards: int = 1,
    dtype: str | torch.dtype | None = None,
    tokenizer_model: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Convert a HF Llama folder to Meta's format: consolidated.00..NN.pth, params.json, tokenizer.model.

    shards: model-parallel size (Meta's code needs as many processes); it must divide the heads, kv heads, dim,
        FFN size and vocabulary. dtype: None/"auto" keeps each tensor's dtype.
    """
    from transformers import AutoConfig

    started = time.monotonic()
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        raise FileNotFoundError(f"{input_dir}: no such folder")
    refuse_existing(output_dir, overwrite)
    if not isinstance(shards, int) or shards < 1:
        raise ValueError(f"shards must be a positive integer, got {shards!r}")
    config_path = input_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: not found")
    try:
        config = AutoConfig.from_pretrained(input_dir)
    except OSError as err:  # transformers reports an unreadable config.json as OSError
        raise ValueError(f"{config_path}: {err}") from None
    shape = LlamaShape.from_hf_config(config, config_path)
    shape.check_shards(shards, config_path)
    layout = weights(shape)
    source = HFWeights(input_dir)

    tied = getattr(config, "tie_word_embeddings", False) and "lm_head.weight" not in source.meta
    hf_names = {w.meta: ("model.embed_tokens.weight" if tied and w.hf == "lm_head.weight" else w.hf) for w in layout}
    known = set(hf_names.values())
    unknown = sorted(n for n in source.meta if n not in known and not n.endswith("rotary_emb.inv_freq"))
    missing = sorted(known - set(source.meta))
    if unknown or missing:
        problems = [
            f"{label} tensors {_listed(names)}"
            for label, names in (("unknown", unknown), ("missing", missing))
            if names
        ]
        raise ValueError(f"{input_dir}: {'; '.join(problems)}")
    for w in layout:
        found_dtype, found_shape = source.meta[hf_names[w.meta]]
        if found_shape != w.shape or found_dtype is None:
            raise ValueError(
                f"{input_dir}: {hf_names[w.meta]} is {found_dtype or 'of an unsupported dtype'} "
                f"{found_shape}; config.json gives {w.shape}"
            )

    tok_path = Path(tokenizer_model) if tokenizer_model is not None else input_dir / "tokenizer.model"
    if not tok_path.is_file():
        raise FileNotFoundError(
            f"{tok_path}: not found; Meta's format needs the SentencePiece tokenizer.model (pass --tokenizer)"
        )
    pieces = len(load_sp_model(tok_path).pieces)
    if pieces != shape.vocab_size:
        raise ValueError(f"{tok_path} has {pieces} pieces but {config_path} has vocab_size {shape.vocab_size}")

    entries = [
        _Entry(w.meta, _resolve_dtype(dtype, source.meta[hf_names[w.meta]][0]), w.shard_shape(shards)) for w in layout
    ]
    total = shards * sum(e.nbytes for e in entries)
    with atomic_dir(output_dir, overwrite=overwrite) as tmp, _progress(total, "hf-to-meta", progress) as bar:
        for s in range(shards):
            tensors = (
                _meta_part(w, hf_names[w.meta], source, shards, s, shape.head_dim).to(e.dtype)
                for w, e in zip(layout, entries, strict=False)
            )
            write_pth(tmp / f"consolidated.{s:02d}.pth", entries, tensors, bar)
        (tmp / "params.json").write_text(json.dumps(shape.params_json(), indent=2) + "\n")
        shutil.copyfile(tok_path, tmp / "tokenizer.model")

    _log_summary(
        "hf-to-meta", output_dir, shape, entries[0].dtype, len(set(source.files.values())), shards, total, started
    )
    return output_dir


# ---------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert checkpoints between Meta's consolidated.NN.pth format and Hugging Face safetensors",
        description="Convert checkpoints between Meta's format and Hugging Face's, streaming tensor by tensor.",
    )
    directions = parser.add_subparsers(dest="direction", required=True)
    to_hf = directions.add_parser("meta-to-hf", help="Meta consolidated.NN.pth + params.json -> HF folder")
    to_hf.add_argument("--input", type=Path, required=True, help="Meta checkpoint folder")
    to_hf.add_argument("--output", type=Path, required=True, help="HF output folder (must not exist)")
    to_hf.add_argument(
        "--dtype", default="bfloat16", choices=[*DTYPE_NAMES, "auto"], help="weights dtype (default bf16)"
    )
    to_hf.add_argument(
        "--extend-vocab",
        action="store_true",
        help="add Code Llama's 16 infilling pieces (Llama 2 -> Code Llama 7B/13B init)",
    )
    to_hf.add_argument("--tokenizer", type=Path, help="tokenizer.model (default: in --input or its parent)")
    to_hf.add_argument("--max-shard-size", default="5GB", help="largest safetensors file (default 5GB)")
    to_hf.add_argument("--max-position-embeddings", type=int, help="default 16384 if theta > 1e4, else 4096")
    to_hf.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    to_hf.add_argument("--no-progress", action="store_true", help="no progress bar")
    to_hf.set_defaults(func=_cli_meta_to_hf)

    to_meta = directions.add_parser("hf-to-meta", help="HF folder -> Meta consolidated.NN.pth + params.json")
    to_meta.add_argument("--input", type=Path, required=True, help="HF model folder")
    to_meta.add_argument("--output", type=Path, required=True, help="Meta output folder (must not exist)")
    to_meta.add_argument("--shards", type=int, default=1, help="model-parallel shards (7B: 1, 13B: 2, 34B: 4)")
    to_meta.add_argument("--dtype", default="auto", choices=[*DTYPE_NAMES, "auto"], help="default: keep the input's")
    to_meta.add_argument("--tokenizer", type=Path, help="tokenizer.model (default: the one in --input)")
    to_meta.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    to_meta.add_argument("--no-progress", action="store_true", help="no progress bar")
    to_meta.set_defaults(func=_cli_hf_to_meta)


def _log_to_stdout() -> None:
    if not logger.handlers and not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)


def _cli_meta_to_hf(args: argparse.Namespace) -> int:
    _log_to_stdout()
    meta_to_hf(
        args.input,
        args.output,
        dtype=args.dtype,
        extend_vocab=args.extend_vocab,
        tokenizer_model=args.tokenizer,
        max_shard_size=args.max_shard_size,
        max_position_embeddings=args.max_position_embeddings,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    return 0


def _cli_hf_to_meta(args: argparse.Namespace) -> int:
    _log_to_stdout()
    hf_to_meta(
        args.input,
        args.output,
        shards=args.shards,
        dtype=args.dtype,
        tokenizer_model=args.tokenizer,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    return 0
