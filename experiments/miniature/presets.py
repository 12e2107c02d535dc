"""Run lengths of the miniature: `tiny` (the report's run) and `smoke` (a few steps of everything, for tests)."""

from __future__ import annotations

from dataclasses import dataclass

PRETRAIN = "pretrain"
PYTHON_BRANCH = "code-python-branch"  # code stage without FIM or infilling pieces, continued by python


@dataclass(frozen=True)
class Stage:
    """Run length and batch of one training stage (the rest comes from recipes/configs/tiny/<stage>.yaml)."""

    max_steps: int
    seq_len: int
    tokens_per_step: int
    learning_rate: float

    def argv(self) -> list[str]:
        return [
            "--max_steps",
            str(self.max_steps),
            "--seq_len",
            str(self.seq_len),
            "--tokens_per_step",
            str(self.tokens_per_step),
            "--learning_rate",
            str(self.learning_rate),
            "--per_device_train_batch_size",
            str(min(2, self.tokens_per_step // self.seq_len)),
            "--warmup_steps",
            str(max(1, self.max_steps // 10)),
            "--logging_steps",
            str(max(1, self.max_steps // 20)),
            "--save_steps",
            str(max(1, self.max_steps // 2)),
            "--save_total_limit",
            "1",
        ]


@dataclass(frozen=True)
class Preset:
    stages: dict[str, Stage]
    eval_documents: int  # validation files per corpus for the loss measurements
    eval_tokens_per_file: int  # each file cut to this many tokens
    lcft_lengths: tuple[int, ...]  # 1x, 2x, 4x the code stage's seq_len
    infill_examples: int
    infill_max_new_tokens: int = 24
    instruct_problems: int = 8
    code_files: int | None = None  # training files cut into blocks for the code stage (None: all)


PRESETS = {
    "tiny": Preset(
        stages={
            PRETRAIN: Stage(40, 256, 2048, 3e-3),
            "code": Stage(60, 256, 2048, 3e-3),
            "python": Stage(30, 256, 2048, 1e-3),
            "lcft": Stage(16, 1024, 4096, 1e-3),
            "instruct": Stage(12, 512, 2048, 1e-3),
        },
        eval_documents=40,
        eval_tokens_per_file=1025,
        lcft_lengths=(256, 512, 1024),
        infill_examples=60,
    ),
    # A few steps of everything: the test's end-to-end run (numbers are plumbing checks only)
    "smoke": Preset(
        stages={
            PRETRAIN: Stage(2, 64, 256, 3e-3),
            "code": Stage(2, 64, 256, 3e-3),
            "python": Stage(2, 64, 256, 1e-3),
            "lcft": Stage(2, 256, 512, 1e-3),
            "instruct": Stage(2, 128, 256, 1e-3),
        },
        eval_documents=4,
        eval_tokens_per_file=257,
        lcft_lengths=(64, 128, 256),
        infill_examples=4,
        infill_max_new_tokens=8,
        instruct_problems=3,
        code_files=50,
    ),
}
