"""Reading Meta's consolidated.NN.pth shards without holding a whole tensor.

Shards are opened with `torch.load(mmap=True, weights_only=True)`; a tensor is merged across shards a block of rows
at a time, and its mapped pages are dropped from the process once written. Bytes that pass unchanged are handed on
as file spans, copied file to file by the writers. Every tensor record is checked against the CRC-32 stored in the
.pth zip (in a thread, one tensor ahead), so a corrupted download is reported rather than converted.
"""

from __future__ import annotations

import ctypes
import math
import mmap
import re
import struct
import sys
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from codellama_hf.convert.layout import (
    SAFETENSORS_DTYPES,
    LlamaShape,
    Weight,
    meta_to_hf_rotary_view,
    short_list,
    weights,
)
from codellama_hf.io import read_json_object

try:  # ISA-L's CRC-32 runs at memory speed (about 15 GB/s here, zlib's about 3): the check then costs little
    from isal.isal_zlib import crc32
except ImportError:
    from zlib import crc32

_SHARD_NAME = re.compile(r"consolidated\.(\d+)\.pth")
_BLOCK_BYTES = 64 << 20  # rows are merged and written in blocks of about this size
_IGNORED_META_KEYS = {"rope.freqs"}  # a legacy buffer in Llama checkpoints; Meta's code loads with strict=False


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
class FileSpan:
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

    def span(self, tensor: torch.Tensor) -> FileSpan:
        """Where a contiguous tensor of this shard lies in the file."""
        return FileSpan(self.path, tensor.data_ptr() - self._base, tensor)

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
                f"{shard.path}: unknown tensors {short_list(unknown)}; only Llama 2 / Code Llama "
                "checkpoints are supported"
            )
        missing = sorted(expected - keys)
        if missing:
            raise ValueError(
                f"{shard.path}: missing tensors {short_list(missing)} "
                f"(params.json says n_layers={self.shape.n_layers})"
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
            if tensor.dtype not in SAFETENSORS_DTYPES:
                raise ValueError(f"{shard.path}: {w.meta} has dtype {tensor.dtype}; expected bfloat16/float16/float32")

    def stream(self, order: list[Weight], dtype: torch.dtype) -> Iterator[Iterator[torch.Tensor | FileSpan]]:
        """`merged` for each weight in turn, CRC-checking the next weight in a thread meanwhile (the check costs
        about as much as the copy, and both release the GIL)."""

        def verify(w: Weight) -> None:
            for shard in self.shards:
                shard.verify(w.meta)

        with ThreadPoolExecutor(max_workers=1) as pool:
            checked = pool.submit(verify, order[0]) if order else None
            for i, w in enumerate(order):
                checked.result()
                if i + 1 < len(order):
                    checked = pool.submit(verify, order[i + 1])
                yield self.merged(w, dtype)

    def merged(self, w: Weight, dtype: torch.dtype) -> Iterator[torch.Tensor | FileSpan]:
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
                    yield self._staged([meta_to_hf_rotary_view(block, head_dim) if w.rotary else block], dtype)
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
