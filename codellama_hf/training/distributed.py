"""Setting up the processes' communication, as an explicit first step of a stage (before its arguments are parsed).

DeepSpeed on a machine without CUDA needs one thing done by hand: accelerate finds no backend on CPU and would run a
2-process DeepSpeed launch as one process (docs/stack-notes.md, DeepSpeed ZeRO-3 on a CPU). Creating accelerate's
state first, as a DeepSpeed state with gloo, and letting TrainingArguments adopt it
(`accelerator_config.use_configured_state`, set by StageConfig when such a state exists) makes `accelerate launch
--config_file accelerate_configs/cpu_zero3.yaml` and `torchrun ... --deepspeed` both work. On GPUs, or in one
process, nothing is done here: TrainingArguments sets up accelerate as usual.
"""

from __future__ import annotations

import os


def launch_world_size() -> int:
    """Processes in this launch, from the launcher's environment (accelerate, torchrun and deepspeed set it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def configured_state():
    """accelerate's process state when one was already created in this process, else None (creates nothing)."""
    from accelerate import PartialState

    return PartialState() if PartialState._shared_state else None


def setup_distributed(*, deepspeed: bool) -> bool:
    """Create the gloo DeepSpeed state for a multi-process DeepSpeed launch on CPU; True when it did."""
    import torch
    from accelerate import PartialState

    deepspeed = deepspeed or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true", "yes")
    if torch.cuda.is_available() or launch_world_size() == 1 or not deepspeed or configured_state() is not None:
        return False
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    PartialState(backend="gloo")
    return True


def process_state():
    """accelerate's process state (created on first use)."""
    from accelerate import PartialState

    return PartialState()


def main_print(*args) -> None:
    """Print once, from the main process."""
    if process_state().is_main_process:
        from rich.console import Console

        Console(highlight=False).print(*args, soft_wrap=all(isinstance(a, str) for a in args))  # no wrap in logs
