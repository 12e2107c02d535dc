"""Streaming writers: safetensors files and .pth files byte-for-byte as `torch.save` writes them, a tensor at a time.

File spans are copied in the kernel (`os.copy_file_range`, as `cp` does); tensors are written block by block.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import pickle
import struct
import sys
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from codellama_hf.convert.layout import SAFETENSORS_DTYPES, LlamaShape, weights
from codellama_hf.convert.meta_reader import FileSpan

logger = logging.getLogger(__name__)

_STORAGE_TYPES = {torch.bfloat16: "BFloat16Storage", torch.float16: "HalfStorage", torch.float32: "FloatStorage"}


@dataclass(frozen=True)
class Entry:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _raw(tensor: torch.Tensor):
    """A tensor's bytes as a flat buffer for file.write, without a copy when it is already contiguous."""
    return tensor.contiguous().view(-1).view(torch.uint8).numpy()


class SafetensorsWriter:
    """Writes one .safetensors file tensor by tensor, block by block.

    The safetensors package only serializes tensors that are all in memory at once; the format itself is a JSON
    header with every tensor's offsets followed by the raw bytes, so knowing the shapes up front is enough.
    """

    def __init__(self, path: Path, entries: list[Entry]):
        header: dict = {"__metadata__": {"format": "pt"}}
        offset = 0
        for e in entries:
            header[e.name] = {
                "dtype": SAFETENSORS_DTYPES[e.dtype],
                "shape": list(e.shape),
                "data_offsets": [offset, offset + e.nbytes],
            }
            offset += e.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # tensor data starts 8-byte aligned, as safetensors itself writes
        self.path, self._pending, self._header = path, list(entries), struct.pack("<Q", len(raw)) + raw

    def __enter__(self) -> SafetensorsWriter:
        self._file = open(self.path, "wb", buffering=0)  # closed in __exit__
        _write_all(self._file, self._header)
        return self

    def write(self, name: str, blocks: Iterable[torch.Tensor | FileSpan], progress: tqdm) -> None:
        entry = self._pending.pop(0)
        if entry.name != name:
            raise RuntimeError(f"{self.path}: expected tensor {entry.name}, got {name}")
        written = 0
        for block in blocks:
            if isinstance(block, FileSpan):
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


def _copy_span(span: FileSpan, file: io.FileIO) -> int:
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


def write_pth(path: Path, entries: list[Entry], tensors: Iterable[torch.Tensor], progress: tqdm) -> None:
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


def progress_bar(total: int, desc: str, enabled: bool) -> tqdm:
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, disable=not enabled)


def log_summary(
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
