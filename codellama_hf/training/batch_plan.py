"""The token batch plan: how one optimizer step's tokens split over processes, micro-batches and accumulation.

The paper gives batch sizes in tokens (4M tokens of 4,096-token sequences, paper §2.6), so a stage states
`tokens_per_step` and the plan derives gradient accumulation (and the step count from a token budget) for the
launch's world size and micro-batch. Used by `StageConfig` (training/config.py) and the memory planner.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class BatchPlan:
    """How one optimizer step's tokens are split over processes, micro-batches and accumulation."""

    world_size: int
    micro_batch: int
    seq_len: int
    grad_accum: int
    max_steps: int
    sequence_parallel: int = 1  # processes sharing each row (Ulysses); data-parallel replicas = world / this

    @property
    def data_parallel(self) -> int:
        return self.world_size // self.sequence_parallel

    @property
    def sequences_per_step(self) -> int:
        return self.data_parallel * self.micro_batch * self.grad_accum

    @property
    def tokens_per_step(self) -> int:
        return self.sequences_per_step * self.seq_len

    @property
    def total_tokens(self) -> int:
        return self.tokens_per_step * self.max_steps

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "sequences_per_step": self.sequences_per_step,
            "tokens_per_step": self.tokens_per_step,
            "total_tokens": self.total_tokens,
        }

    def describe(self) -> str:
        replicas = (
            f"{self.data_parallel} data-parallel replicas ({self.world_size} processes / sequence parallel "
            f"{self.sequence_parallel})"
            if self.sequence_parallel > 1
            else f"{self.world_size} processes"
        )
        return (
            f"batch plan: {self.tokens_per_step:,} tokens per step = {replicas} x "
            f"{self.micro_batch} sequences x {self.grad_accum} accumulation steps x {self.seq_len:,} tokens; "
            f"{self.max_steps:,} steps = {self.total_tokens:,} tokens"
        )


def batch_plan(
    *,
    tokens_per_step: int,
    seq_len: int,
    micro_batch: int,
    world_size: int,
    max_steps: int | None = None,
    train_tokens: int | None = None,
    grad_accum: int | None = None,
    sequence_parallel: int = 1,
) -> BatchPlan:
    """Derive gradient accumulation (and steps, from a token budget) so each step sees exactly `tokens_per_step`.

    With sequence parallelism, `sequence_parallel` processes share each row, so only world / sequence_parallel
    replicas add rows to a pass and accumulation grows to keep the tokens per step.
    """
    for name, value in (
        ("tokens_per_step", tokens_per_step),
        ("seq_len", seq_len),
        ("per_device_train_batch_size", micro_batch),
        ("world size", world_size),
    ):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name}={value!r}: must be a positive integer")
    if tokens_per_step % seq_len:
        raise ValueError(f"tokens_per_step={tokens_per_step:,} is not a whole number of {seq_len:,}-token sequences")
    if not isinstance(sequence_parallel, int) or sequence_parallel < 1 or world_size % sequence_parallel:
        raise ValueError(
            f"sequence_parallel_size={sequence_parallel!r} must be a positive divisor of the {world_size} processes"
        )
    sequences = tokens_per_step // seq_len
    replicas = world_size // sequence_parallel
    per_pass = replicas * micro_batch
    if per_pass > sequences or sequences % per_pass:
        fits = [m for m in range(1, sequences // replicas + 1) if sequences % (m * replicas) == 0]
        reason = "exceeds" if per_pass > sequences else "does not divide"
        who = f"{replicas} data-parallel replicas" if sequence_parallel > 1 else f"{world_size} processes"
        raise ValueError(
            f"per_device_train_batch_size={micro_batch} cannot reach the token batch: {who} x "
            f"{micro_batch} sequences = {per_pass} sequences per pass, which {reason} the {sequences} sequences of "
            f"tokens_per_step={tokens_per_step:,}. "
            + (
                f"Use per_device_train_batch_size in {fits}."
                if fits
                else f"Raise tokens_per_step to a multiple of {per_pass * seq_len:,} or use fewer processes."
            )
        )
    derived = sequences // per_pass
    if grad_accum is not None and grad_accum != derived:
        raise ValueError(
            f"gradient_accumulation_steps={grad_accum} contradicts the plan ({derived} for {replicas} replicas x "
            f"{micro_batch} sequences at tokens_per_step={tokens_per_step:,}); leave it unset: it is derived"
        )
    if (max_steps is None) == (train_tokens is None):
        raise ValueError("set exactly one of max_steps and train_tokens (the run length)")
    if train_tokens is not None:
        if train_tokens <= 0:
            raise ValueError(f"train_tokens={train_tokens}: must be positive")
        max_steps = math.ceil(train_tokens / tokens_per_step)
    if max_steps <= 0:
        raise ValueError(f"max_steps={max_steps}: must be positive")
    return BatchPlan(
        world_size=world_size,
        micro_batch=micro_batch,
        seq_len=seq_len,
        grad_accum=derived,
        max_steps=max_steps,
        sequence_parallel=sequence_parallel,
    )
