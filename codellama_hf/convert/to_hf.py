"""Meta -> HF: a Meta checkpoint folder (consolidated.NN.pth, params.json, tokenizer.model) becomes an HF folder.

With `extend_vocab`, Llama 2's 32,000-piece vocabulary grows by Code Llama's 16 infilling pieces (paper §2.3); the
new embedding and output rows are the mean of the old ones.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import torch
from huggingface_hub import split_state_dict_into_shards_factory

from codellama_hf.convert.layout import LlamaShape, resolve_dtype
from codellama_hf.convert.meta_reader import FileSpan, MetaCheckpoint
from codellama_hf.convert.writers import Entry, SafetensorsWriter, log_summary, progress_bar
from codellama_hf.io import atomic_dir, refuse_existing
from codellama_hf.tokenizer import INFILLING_PIECES, SENTINELS, add_infilling_pieces, load_sp_model

_VOCAB_TENSORS = ("model.embed_tokens.weight", "lm_head.weight")


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
    target = resolve_dtype(dtype, checkpoint.dtype)

    by_hf = {w.hf: w for w in checkpoint.layout}
    entries = {
        w.hf: Entry(w.hf, target, (out_shape.vocab_size, shape.dim) if w.hf in _VOCAB_TENSORS else w.shape)
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
        progress_bar(total, "meta-to-hf", progress) as bar,
        ThreadPoolExecutor(max_workers=1) as side,
    ):
        # config, generation config and tokenizer files (building the BPE merges takes a while) meanwhile
        metadata = side.submit(_write_hf_metadata, tmp, out_shape, target, max_position_embeddings, proto)
        for filename, names in split.filename_to_tensors.items():
            with SafetensorsWriter(tmp / filename, [entries[n] for n in names]) as writer:
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

    log_summary(
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


def _with_mean_rows(blocks: Iterable[torch.Tensor | FileSpan], extra_rows: int) -> Iterator[torch.Tensor | FileSpan]:
    """Pass the blocks through, then `extra_rows` copies of their mean row (accumulated in float32)."""
    total, count = None, 0
    for block in blocks:
        rows = block.tensor if isinstance(block, FileSpan) else block
        row_sum = rows.sum(dim=0, dtype=torch.float32)
        total = row_sum if total is None else total + row_sum
        count += rows.shape[0]
        yield block
    yield (total / count).expand(extra_rows, -1)


def _write_hf_metadata(folder: Path, shape: LlamaShape, dtype: torch.dtype, max_positions: int | None, proto) -> None:
    from codellama_hf.export.model_folder import complete_model_folder

    config = shape.hf_config(dtype, max_positions, proto.trainer_spec.bos_id, proto.trainer_spec.eos_id)
    config.save_pretrained(folder)
    (folder / "tokenizer.model").write_bytes(proto.SerializeToString())
    complete_model_folder(folder)  # both rope keys, stop ids, tokenizer files from tokenizer.model
