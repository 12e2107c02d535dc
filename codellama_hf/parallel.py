"""Ulysses sequence parallelism (DeepSpeed ALST through accelerate's ParallelismConfig): settings and row sharding.

With `sequence_parallel_size` = sp > 1, each group of sp processes trains on one packed row at a time: every
process holds 1/sp of the row's tokens through the MLPs, and attention exchanges (all-to-all) sequence shards
for head shards, so each process attends over the *whole* row for heads/sp heads (Jacobs et al. 2023, "DeepSpeed
Ulysses", arXiv 2309.14509). Data-parallel replicas are therefore world / sp, and the token batch per optimizer
step is unchanged: gradient accumulation grows by sp.

Packed rows stay document-isolated across the split because the row is cut only *after* the collator derived
position_ids from the documents, and each shard keeps its slice of those per-document positions; attention gathers
the full position_ids back before it builds the mask (or the varlen boundaries):

    row (16 tokens, 3 documents)   a a a a a b b b b b b b c c c c
    position_ids                   0 1 2 3 4 0 1 2 3 4 5 6 0 1 2 3
    labels shifted, then cut       -- shard 0 (rank 0) -- | -- shard 1 (rank 1) --
    shard 0 position_ids           0 1 2 3 4 0 1 2
    shard 1 position_ids                                    3 4 5 6 0 1 2 3

Labels are shifted before the cut (DeepSpeed's `UlyssesSPDataLoaderAdapter` turns `labels` into `shift_labels`), so
the token at a shard's end still predicts the first token of the next shard. The exchange is
`all_to_all_single`, which gloo implements: the tiny recipe trains with sequence_parallel_size 2 on two CPU processes.
"""

from __future__ import annotations

import torch


def check_sequence_parallel(
    sp: int, *, world_size: int, num_heads: int, num_kv_heads: int, seq_len: int, where: str = "sequence_parallel_size"
) -> None:
    """Refuse a sequence-parallel size Ulysses cannot run, naming the setting (before any model is loaded)."""
    if not isinstance(sp, int) or sp < 1:
        raise ValueError(f"{where}={sp!r}: must be a positive integer (1 turns sequence parallelism off)")
    if sp == 1:
        return
    if world_size % sp:
        raise ValueError(
            f"{where}={sp} does not divide the {world_size} processes of this launch: data-parallel replicas are "
            f"world / {where}; use a divisor of {world_size}"
        )
    if num_heads % sp:
        divisors = [d for d in range(2, num_heads + 1) if num_heads % d == 0 and world_size % d == 0]
        raise ValueError(
            f"{where}={sp} does not divide the model's {num_heads} attention heads (Ulysses gives each process "
            f"heads / {where} whole heads); use one of {divisors or [1]}"
        )
    if num_kv_heads % sp and sp % num_kv_heads:
        raise ValueError(
            f"{where}={sp} and the model's {num_kv_heads} key/value heads: one must divide the other "
            "(Ulysses splits or replicates whole key/value heads)"
        )
    if seq_len % sp:
        raise ValueError(f"{where}={sp} does not divide seq_len={seq_len}: every process gets an equal shard")


def parallelism_config(sp: int, data_parallel: int, attn_implementation: str):
    """accelerate's ParallelismConfig for Ulysses over DeepSpeed (None when sp == 1).

    ZeRO shards over the data-parallel dimension (`dp_shard_size` = world / sp, as in TRL's ALST example);

    `sp_attn_implementation` is the kernel Ulysses calls on the gathered sequence (flash_attention_2/3 or sdpa);
    the model itself is switched to DeepSpeed's "ulysses" attention when accelerate prepares it. Packed rows
    carry position_ids, so the sequence length is variable only in principle: rows are all seq_len long.
    """
    if sp == 1:
        return None
    from accelerate.parallelism_config import ParallelismConfig
    from accelerate.utils import DeepSpeedSequenceParallelConfig

    return ParallelismConfig(
        sp_size=sp,
        sp_backend="deepspeed",
        dp_shard_size=data_parallel,
        sp_handler=DeepSpeedSequenceParallelConfig(sp_attn_implementation=attn_implementation),
    )


def shard_row(batch: dict[str, torch.Tensor], sp: int, rank: int) -> dict[str, torch.Tensor]:
    """The part of a collated batch that process `rank` of an sp group trains on (what the DeepSpeed adapter does).

    `labels` become `shift_labels` (shifted over the whole row, then cut), every other tensor is cut along the
    sequence; position_ids keep their per-document values. Used to check the sharding on CPU; in training
    DeepSpeed's `UlyssesSPDataLoaderAdapter` does this after gathering the rows of the group.
    """
    length = batch["input_ids"].shape[1]
    if length % sp:
        raise ValueError(f"row of {length} tokens does not split into {sp} equal shards")
    if "position_ids" not in batch:
        raise ValueError("sequence parallelism needs position_ids in every batch (PackedCollator provides them)")
    piece = length // sp
    out = {}
    for key, value in batch.items():
        if key == "labels":
            key, value = "shift_labels", torch.nn.functional.pad(value, (0, 1), value=-100)[:, 1:]
        out[key] = value[:, piece * rank : piece * (rank + 1)]
    return out
