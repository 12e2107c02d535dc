"""Checkpoints and resuming: the newest complete checkpoint, the run's signature, and each process's data position.

A checkpoint is complete when `run_signature.json` is in it: the trainer writes it last, after the model and
optimizer state and after every process has written `data_state/rank<r>.json` (where each of its streams stands,
data/stream.py). A resume reads that file and continues the streams from there: nothing consumed is read again.
The signature holds every setting that fixes the sequence of batches (processes, micro-batch, sequence length,
run length, seeds, the data settings and the identity of the documents); a resume under other values is refused
with the fields named, instead of silently training on other data.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

from codellama_hf.data.stream import Position
from codellama_hf.io import changed_settings, write_json
from codellama_hf.training.distributed import main_print as _print
from codellama_hf.training.distributed import process_state as _state

logger = logging.getLogger(__name__)

SIGNATURE_FILE = "run_signature.json"  # written last into each complete checkpoint
DATA_STATE_DIR = "data_state"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_RUN_ARTIFACTS = ("lineage.json", "training_args.bin", "trainer_state.json", "runs")


def checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """checkpoint-N folders in step order."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint that was completely written (a run killed mid-save leaves a partial one)."""
    for folder in reversed(checkpoints(output_dir)):
        if (folder / "trainer_state.json").is_file() and (folder / SIGNATURE_FILE).is_file():
            return folder
        logger.warning("skipping incomplete checkpoint %s", folder)
    return None


def prepare_output_dir(config) -> None:
    """Refuse to mix a new run into an earlier one's folder unless resuming or explicitly overwriting."""
    out = Path(config.output_dir)
    earlier = out.is_dir() and (bool(checkpoints(out)) or any((out / name).exists() for name in _RUN_ARTIFACTS))
    state = _state()
    state.wait_for_everyone()  # every process has looked before anything is deleted
    if not earlier or config.resume_from_checkpoint is not None:
        return
    if not config.overwrite_output_dir:
        raise FileExistsError(
            f"output_dir {out} already holds a run; pass --resume_from_checkpoint to continue it "
            "or --overwrite_output_dir true to start over"
        )
    if state.is_main_process:
        _print(f"[yellow]overwriting the earlier run in {out}[/yellow]")
        shutil.rmtree(out)
    state.wait_for_everyone()


def resume_checkpoint(config, signature: dict) -> str | None:
    """The checkpoint to resume from ('latest' -> newest complete one), checked against this run's signature."""
    requested = config.resume_from_checkpoint
    if requested is None:
        return None
    if requested.lower() in ("latest", "true"):
        found = latest_checkpoint(config.output_dir)
        if found is None:
            _print(f"no checkpoint in {config.output_dir} yet: starting from the beginning")
            return None
    else:
        found = Path(requested)
        if not (found / "trainer_state.json").is_file():
            raise FileNotFoundError(
                f"resume_from_checkpoint={requested}: not a checkpoint folder (no trainer_state.json)"
            )
    saved_path = found / SIGNATURE_FILE
    if saved_path.is_file():
        detail = changed_settings(json.loads(saved_path.read_text()), signature)
        if detail:
            raise ValueError(
                f"cannot resume from {found}: it was written under different settings ({detail}). "
                "Resume with the same processes, batch, run length and data, or start a new output_dir"
            )
    _print(f"resuming from {found}")
    return str(found)


# ---------------------------------------------------------------------------------------------------------------
def write_data_state(folder: Path, rank: int, batches: int, positions: dict[int, Position]) -> None:
    """This process's stream positions after `batches` consumed micro-batches, into a checkpoint folder."""
    (folder / DATA_STATE_DIR).mkdir(parents=True, exist_ok=True)
    state = {"batches": batches, "streams": {str(k): [p.epoch, p.cursor, p.row] for k, p in positions.items()}}
    write_json(folder / DATA_STATE_DIR / f"rank{rank}.json", state, sort_keys=True)


def read_data_state(folder: str | os.PathLike, rank: int, batches: int) -> dict[int, Position]:
    """The stream positions this process saved in a checkpoint, checked against the micro-batches consumed."""
    path = Path(folder) / DATA_STATE_DIR / f"rank{rank}.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: this checkpoint has no data position for process {rank} (written by an older version or "
            "another number of processes); start a new output_dir"
        )
    state = json.loads(path.read_text())
    if state["batches"] != batches:
        raise ValueError(
            f"{path}: saved after {state['batches']} micro-batches, but the checkpoint's step means {batches}"
        )
    return {int(k): Position(*v) for k, v in state["streams"].items()}
