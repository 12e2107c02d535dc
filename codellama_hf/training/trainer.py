"""The stage trainer: transformers' Trainer on the streaming data path (data/stream.py), with exact O(1) resume."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from codellama_hf.data.stream import POSITION_KEY, PackedStream, Position, stream_loader
from codellama_hf.export.model_folder import complete_model_folder
from codellama_hf.io import write_json
from codellama_hf.training.checkpoints import SIGNATURE_FILE, read_data_state, write_data_state
from codellama_hf.training.precision import OptimizerGroupsMixin


class StageTrainer(OptimizerGroupsMixin, Trainer):
    """transformers' Trainer on the streaming data path, with the paper's schedule end point and FIM counts logged.

    The training data is a `PackedStream` read through its own DataLoader (workers tokenize and pack; accelerate
    does not dispatch or re-shard it: each process's stream is its own shard). Every batch carries its stream's
    position; checkpoints store the positions and a resume continues from them (`get_resumed_dataloader`).

    Trainer's schedules reach their floor one step after the last update, so the final learning rate the paper
    specifies (peak/30) would never be applied; here the decay ends on the last update. With FIM on, each logged
    step also reports how many PSM and SPM documents it trained on (summed over processes), which makes the FIM
    decisions visible and comparable across an interrupted and a resumed run.
    """

    def __init__(self, *args, infill=None, signature: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._streamed = isinstance(self.train_dataset, PackedStream)  # else Trainer's own data loading
        self.infill, self.signature = infill, signature or {}
        self._fim_counts = torch.zeros(2, dtype=torch.long, device=self.args.device) if infill else None
        self._resume_dir: str | None = None
        self._batches = 0  # micro-batches consumed by this process
        self._positions: dict[int, Position] = {}
        self._sequence_parallel = getattr(self.args, "sequence_parallel_size", 1)

    # -- data: the stream's DataLoader, resumed from the checkpoint's positions instead of skipping batches --

    @property
    def data_positions(self) -> dict[int, Position]:
        """Where this process's streams stand after the micro-batches consumed so far."""
        return dict(self._positions)

    def _loader(self, stream: PackedStream):
        return stream_loader(
            stream,
            num_workers=self.args.dataloader_num_workers,
            collator=self.data_collator,
            prefetch_factor=self.args.dataloader_prefetch_factor,
            pin_memory=self.args.dataloader_pin_memory and torch.cuda.is_available(),
            persistent_workers=self.args.dataloader_persistent_workers,
        )

    def train(self, resume_from_checkpoint=None, **kwargs):
        self._resume_dir = resume_from_checkpoint if isinstance(resume_from_checkpoint, str) else None
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _run_epoch(self, *args, **kwargs):
        """Nothing is left to train after a resume from the run's final checkpoint.

        The stream has no length, so the Trainer counts max_steps as one "epoch" and, resumed at global_step ==
        max_steps, would start another pass and take a step past max_steps before it checks `should_training_stop`.
        """
        if 0 < self.state.max_steps <= self.state.global_step:
            self.control.should_training_stop = True
            return
        return super()._run_epoch(*args, **kwargs)

    def get_train_dataloader(self):
        return self._loader(self.train_dataset) if self._streamed else super().get_train_dataloader()

    def get_resumed_dataloader(self, dataloader, num_batches: int):
        """The stream from where the checkpoint left it: O(1), whatever the step (no batch is read to skip it)."""
        if not self._streamed:
            return super().get_resumed_dataloader(dataloader, num_batches)
        if self._resume_dir is None:
            raise ValueError("resuming needs the checkpoint folder (pass resume_from_checkpoint as a path)")
        if self._sequence_parallel > 1:
            raise ValueError(
                "resuming a sequence-parallel run (sequence_parallel_size > 1) is not supported by the streaming "
                "data path yet: DeepSpeed's Ulysses adapter regroups the batches, so their data positions are not "
                "saved; start a new output_dir"
            )
        rank = self.accelerator.process_index
        self._positions = read_data_state(self._resume_dir, rank, num_batches)
        self._batches = num_batches
        return self._loader(self.train_dataset.resumed(num_batches, self._positions))

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches, items = super().get_batch_samples(epoch_iterator, num_batches, device)
        for batch in batches:
            if POSITION_KEY not in batch:
                continue
            k, stream, epoch, cursor, row = batch.pop(POSITION_KEY)
            if self._sequence_parallel > 1:  # DeepSpeed's Ulysses adapter regroups batches: positions not tracked
                continue
            if k != self._batches:
                raise RuntimeError(f"data stream out of order: micro-batch {k} arrived, {self._batches} expected")
            self._positions[stream] = Position(epoch, cursor, row)
            self._batches = k + 1
        return batches, items

    def _save_checkpoint(self, model, trial):
        """Trainer's checkpoint (made a complete model folder: export/model_folder.py), then every process's data
        position, then (last) the signature that marks the checkpoint complete."""
        super()._save_checkpoint(model, trial)
        folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save and folder.is_dir():
            complete_model_folder(folder, tokenizer=self.processing_class)
        if self._streamed and self._sequence_parallel == 1:
            write_data_state(folder, self.accelerator.process_index, self._batches, self._positions)
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            write_json(folder / SIGNATURE_FILE, self.signature, sort_keys=True)
        self.accelerator.wait_for_everyone()

    # -- schedule and FIM counts --

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        return super().create_scheduler(max(1, num_training_steps - 1), optimizer)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self._fim_counts is not None:
            ids = inputs["input_ids"]
            starts = ids == self.infill.prefix
            spm = (starts[:, :-1] & (ids[:, 1:] == self.infill.suffix)).sum()
            self._fim_counts += torch.stack([starts.sum() - spm, spm]).to(self._fim_counts.device)
        return super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )

    def log(self, logs: dict, start_time: float | None = None) -> None:
        if self._fim_counts is not None and "loss" in logs:  # every process logs here, so reducing is safe
            psm, spm = self.accelerator.reduce(self._fim_counts.clone(), reduction="sum").tolist()
            logs["fim_psm"], logs["fim_spm"] = psm, spm
            self._fim_counts.zero_()
        super().log(logs, start_time)


def check_zero3_saves_weights(deepspeed_config: dict) -> None:
    """ZeRO-3 without 16-bit gathering on save writes a model folder with no weights (DeepSpeed's config docs;
    docs/stack-notes.md): refuse."""
    zero = deepspeed_config.get("zero_optimization", {})
    if zero.get("stage") == 3 and not zero.get("stage3_gather_16bit_weights_on_model_save", False):
        raise ValueError(
            "the DeepSpeed config runs ZeRO-3 without stage3_gather_16bit_weights_on_model_save: true, "
            "so the final model would be saved without weights; set it (deepspeed_configs/zero3.json "
            "does)"
        )


# ---------------------------------------------------------------------------------------------------------------
