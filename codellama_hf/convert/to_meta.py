"""HF -> Meta: an HF folder becomes consolidated.NN.pth shards + params.json + tokenizer.model for Meta's code."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch

from codellama_hf.convert.layout import (
    DTYPES_FROM_SAFETENSORS,
    LlamaShape,
    Weight,
    hf_to_meta_rotary,
    resolve_dtype,
    short_list,
    weights,
)
from codellama_hf.convert.writers import Entry, log_summary, progress_bar, write_pth
from codellama_hf.io import atomic_dir, read_json_object, refuse_existing
from codellama_hf.tokenizer import load_sp_model


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
                    name: (DTYPES_FROM_SAFETENSORS.get(part.get_dtype()), tuple(part.get_shape()))
                    for name, part in parts.items()
                }
        except Exception as err:  # safetensors raises SafetensorError for damaged headers
            raise ValueError(f"{path}: not a readable safetensors file ({err})") from None

    def read(self, name: str, rows: slice = slice(None), cols: slice = slice(None)) -> torch.Tensor:
        with self._safe_open(self.files[name], framework="pt") as f:
            part = f.get_slice(name)
            return part[rows] if len(part.get_shape()) == 1 else part[rows, cols]


def _meta_part(w: Weight, hf_name: str, source: HFWeights, n: int, s: int, head_dim: int) -> torch.Tensor:
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
            f"{label} tensors {short_list(names)}"
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
        Entry(w.meta, resolve_dtype(dtype, source.meta[hf_names[w.meta]][0]), w.shard_shape(shards)) for w in layout
    ]
    total = shards * sum(e.nbytes for e in entries)
    with atomic_dir(output_dir, overwrite=overwrite) as tmp, progress_bar(total, "hf-to-meta", progress) as bar:
        for s in range(shards):
            tensors = (
                _meta_part(w, hf_names[w.meta], source, shards, s, shape.head_dim).to(e.dtype)
                for w, e in zip(layout, entries, strict=False)
            )
            write_pth(tmp / f"consolidated.{s:02d}.pth", entries, tensors, bar)
        (tmp / "params.json").write_text(json.dumps(shape.params_json(), indent=2) + "\n")
        shutil.copyfile(tok_path, tmp / "tokenizer.model")

    log_summary(
        "hf-to-meta", output_dir, shape, entries[0].dtype, len(set(source.files.values())), shards, total, started
    )
    return output_dir
