"""`codellama-hf plan`: per-GPU memory of a training stage and the micro-batch that reaches its token batch."""

from __future__ import annotations

import argparse
import json

from codellama_hf import planner
from codellama_hf.planner import ATTENTION, OFFLOAD, ModelShape, Setup, plan, stage_defaults


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "plan",
        help="per-GPU memory of a training stage and the micro-batch that reaches its token batch",
        description=planner.__doc__.split("\n\n")[0],
    )
    p.add_argument("--size", required=True, choices=["7b", "13b", "34b", "tiny"])
    p.add_argument("--stage", required=True, help="code, python, lcft, instruct, pretrain (reads its recipe config)")
    p.add_argument("--gpus", type=int, required=True, help="GPUs in the launch (world size)")
    p.add_argument("--gpu-memory", type=float, required=True, help="GiB per GPU (80 for A100/H100-80GB)")
    p.add_argument("--zero", type=int, default=3, choices=[0, 1, 2, 3], help="ZeRO stage (0: DDP)")
    p.add_argument("--offload", default="none", choices=OFFLOAD)
    p.add_argument("--sp", type=int, default=None, help="sequence_parallel_size (default: the recipe's, else 1)")
    p.add_argument("--checkpointing", choices=["full", "none"], default=None, help="default: the recipe's")
    p.add_argument("--fused-loss", action=argparse.BooleanOptionalAction, default=None, help="Liger fused CE")
    p.add_argument("--attention", choices=ATTENTION, default="flash")
    p.add_argument("--micro-batch", type=int, default=None, help="check this micro-batch instead of the largest")
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--tokens-per-step", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=_run)


def _run(args) -> int:
    config = stage_defaults(args.size, args.stage)
    checkpointing = args.checkpointing
    if checkpointing is None:
        on = config.get("activation_checkpointing", config.get("gradient_checkpointing", False))
        checkpointing = "full" if on else "none"
    setup = Setup(
        gpus=args.gpus,
        gpu_memory_gib=args.gpu_memory,
        seq_len=args.seq_len or config["seq_len"],
        tokens_per_step=args.tokens_per_step or config["tokens_per_step"],
        zero_stage=args.zero,
        offload=args.offload,
        sequence_parallel=args.sp or config.get("sequence_parallel_size", 1),
        checkpointing=checkpointing == "full",
        fused_loss=args.fused_loss if args.fused_loss is not None else bool(config.get("use_liger_kernel")),
        attention=args.attention,
        bf16=args.size != "tiny" or bool(config.get("bf16")),
        micro_batch=args.micro_batch,
    )
    result = plan(ModelShape.from_size(args.size), setup)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.describe())
    return 0 if result.fits else 1
