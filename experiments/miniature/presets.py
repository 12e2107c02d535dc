"""Run lengths of the miniature: `tiny` (the report's run) and `smoke` (a few steps of everything, for tests) on a
model trained from scratch; `smollm2` (CPU), `gpu` (one GPU) and `smollm2-smoke` (tests) continue a real pretrained
base, SmolLM2-135M-Instruct (experiments/miniature/real_base.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

PRETRAIN = "pretrain"
PYTHON_BRANCH = "code-python-branch"  # code stage without FIM or infilling pieces, continued by python


@dataclass(frozen=True)
class Stage:
    """Run length and batch of one training stage (the rest comes from recipes/configs/tiny/<stage>.yaml)."""

    max_steps: int
    seq_len: int
    tokens_per_step: int
    learning_rate: float
    saves: int = 2  # checkpoints per stage (a 135M model's checkpoint with AdamW state is ~1.6 GB)
    micro_batch: int = 2

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
            str(min(self.micro_batch, self.tokens_per_step // self.seq_len)),
            "--warmup_steps",
            str(max(1, self.max_steps // 10)),
            "--logging_steps",
            str(max(1, self.max_steps // 20)),
            "--save_steps",
            str(max(1, self.max_steps // self.saves)),
            "--save_total_limit",
            "1",
        ]


@dataclass(frozen=True)
class QuickEval:
    """Quick evaluations during every stage (evaluation/during_training.py), drawn as curves in the report."""

    points: int  # per stage: every max_steps // points steps, the last at the end
    evaluations: tuple[str, ...] = ("infilling", "perplexity")
    options: dict = field(default_factory=dict)  # more QuickEvalConfig fields (a cheaper set for small runs)
    # infilling on this many synthetic repositories (evaluation/synthetic_repositories.py; ~300 tokens each, which
    # a tiny model's context holds; the standard-library packages' tasks need thousands); 0: the standard library
    repositories: int = 0

    def argv(self, max_steps: int, repositories=()) -> list[str]:
        every = max(1, max_steps // self.points)
        argv = ["--quick_eval", *self.evaluations, "--quick_eval_steps", str(every)]
        argv += ["--quick_eval_repositories", *map(str, repositories)] if repositories else []
        return argv + (["--quick_eval_options", json.dumps(self.options)] if self.options else [])


@dataclass(frozen=True)
class Preset:
    stages: dict[str, Stage]
    eval_documents: int  # validation files per corpus for the loss measurements (real base: files long enough)
    eval_tokens_per_file: int  # each file cut to this many tokens
    lcft_lengths: tuple[int, ...]  # 1x, 2x, 4x the code stage's seq_len
    infill_examples: int
    infill_max_new_tokens: int = 24
    instruct_problems: int = 8
    code_files: int | None = None  # training files cut into blocks for the code stage (None: all)
    quick_eval: QuickEval | None = None  # evaluation curves during each stage (None: none)
    # Real-base presets only (real_base.py): the base, HumanEval problems for pass@1, HumanEval single-line
    # infilling examples for exact match, and bf16 autocast (the CPU's avx512_bf16 matmuls are ~2.5x fp32's)
    base: str = "tiny"
    humaneval_problems: int = 0  # the N with the shortest canonical solutions (real_base.humaneval_task_ids)
    humaneval_max_new_tokens: int = 192
    eval_batch_size: int = 8
    bf16: bool = False


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
        quick_eval=QuickEval(
            4,
            options={
                "infilling_tasks": 2,
                "context_tokens": 512,
                "max_new_tokens": 24,
                "perplexity_lengths": [256, 1024],
                "perplexity_max_files": 3,
            },
            repositories=8,
        ),
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
        quick_eval=QuickEval(
            1,
            options={
                "infilling_tasks": 1,
                "context_tokens": 512,
                "max_new_tokens": 4,
                "perplexity_lengths": [64],
                "perplexity_max_files": 1,
            },
            repositories=2,
        ),
    ),
    # SmolLM2-135M-Instruct continued through code (FIM and no-FIM twins), Python, LCFT and instruct with every
    # weight trained (bf16 autocast). Sized for ~30 min on an idle 2-core CPU: measured ~300 training tokens/s at
    # 256-token rows and ~35 s to start each stage, so each code arm reads ~120k tokens (twice that did not fit a
    # shared machine's session); the instruct stage sees the toy bank's 8 dialogs about twice (8 steps, ~15 passes,
    # unlearned the answer format); the evaluations use enough tasks for intervals narrower than the effects sought.
    "smollm2": Preset(
        stages={
            "code": Stage(120, 256, 1024, 3e-4, saves=1, micro_batch=4),
            "python": Stage(40, 256, 1024, 1e-4, saves=1, micro_batch=4),
            "lcft": Stage(20, 1024, 1024, 1e-4, saves=1, micro_batch=1),
            "instruct": Stage(4, 512, 512, 1e-4, saves=1, micro_batch=1),
        },
        eval_documents=4,
        eval_tokens_per_file=1025,
        lcft_lengths=(256, 512, 1024),
        infill_examples=40,
        infill_max_new_tokens=24,
        instruct_problems=8,
        code_files=400,
        base="smollm2",
        humaneval_problems=24,
        humaneval_max_new_tokens=96,
        bf16=True,
    ),
    # The same path sized for about 15 minutes on one H200 (bf16, ~8M tokens per code arm): not run here (no GPU)
    "gpu": Preset(
        stages={
            "code": Stage(120, 2048, 65536, 2e-4, saves=1, micro_batch=16),
            "python": Stage(40, 2048, 65536, 5e-5, saves=1, micro_batch=16),
            "lcft": Stage(20, 8192, 65536, 5e-5, saves=1, micro_batch=4),
            "instruct": Stage(30, 2048, 32768, 5e-5, saves=1, micro_batch=16),
        },
        eval_documents=8,
        eval_tokens_per_file=8193,
        lcft_lengths=(2048, 4096, 8192),
        infill_examples=300,
        infill_max_new_tokens=64,
        instruct_problems=8,
        base="smollm2",
        humaneval_problems=164,
        humaneval_max_new_tokens=512,
        eval_batch_size=32,
        bf16=True,
    ),
    # The real-base path with a few steps of everything: the test's end-to-end run
    "smollm2-smoke": Preset(
        stages={
            "code": Stage(1, 64, 64, 1e-4, saves=1, micro_batch=1),
            "python": Stage(1, 64, 64, 5e-5, saves=1, micro_batch=1),
            "lcft": Stage(1, 128, 128, 5e-5, saves=1, micro_batch=1),
            "instruct": Stage(1, 128, 128, 5e-5, saves=1, micro_batch=1),
        },
        eval_documents=1,
        eval_tokens_per_file=129,
        lcft_lengths=(64, 128),
        infill_examples=1,
        infill_max_new_tokens=4,
        instruct_problems=2,
        code_files=10,
        base="smollm2",
        humaneval_problems=1,
        humaneval_max_new_tokens=8,
        bf16=True,
    ),
}
