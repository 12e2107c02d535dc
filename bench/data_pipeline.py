"""The streaming data path against raw batched Rust tokenization, and the cost of resuming early vs late in a run.

1. Throughput. Corpus: the Python standard library's sources on this machine, tokenized by Code Llama's tokenizer.
   Baseline, in the same run: the Rust tokenizer's `encode_batch_fast` on a Python list in this process, one thread
   (TOKENIZERS_PARALLELISM=false): the bare cost of tokenizing, a lower bound for any pipeline. Measured: one pass
   of the stream (data/stream.py: shard, tokenize, FIM at 0.9, pack into seq_len rows, collate to tensors) through
   its DataLoader with 1 and with 2 workers. Targets: 1 worker >= 0.85 of raw; 2 workers >= 1.7x 1 worker (on an
   idle machine with >= 2 free cores: each worker is a process).
2. Resume cost. A tiny code-stage run (Code Llama tokenizer shape, seq_len 128) saves checkpoints at steps 2 and
   2,000; each is then resumed in a fresh process and timed from launch to the end of its first optimizer step.
   Target: step 2,000 / step 2 <= 1.2 (a replaying resume grows with the step; printed for reference: the time to
   read and pack the 2,000 steps' batches that a replay would redo).

    python bench/data_pipeline.py [--documents 2000] [--seq-len 4096] [--resume-steps 2000] [--skip-resume]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def stdlib_documents(limit: int) -> list[str]:
    paths = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("**/*.py"))
    docs = [p.read_text(encoding="utf-8", errors="replace") for p in paths]
    return [d for d in docs if d.strip()][:limit]


def throughput(args) -> None:
    import datasets
    from timing import best_of  # bench/timing.py
    from transformers import AutoTokenizer

    from codellama_hf.assets import llama2_tokenizer_dir
    from codellama_hf.data.fim import FIMConfig
    from codellama_hf.data.stream import DocumentEncoder, PackedStream, StreamSettings, stream_loader
    from codellama_hf.tokenizer import build_codellama_tokenizer

    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory() as tmp:
        tok = AutoTokenizer.from_pretrained(
            build_codellama_tokenizer(llama2_tokenizer_dir() / "tokenizer.model", Path(tmp) / "tok")
        )
    docs = stdlib_documents(args.documents)
    table = datasets.Dataset.from_dict({"text": docs})
    tokens = sum(len(e.ids) for e in tok.backend_tokenizer.encode_batch_fast(docs, add_special_tokens=False))
    chars = sum(map(len, docs))
    print(f"corpus: {len(docs)} standard-library files, {chars / 1e6:.1f} M chars, {tokens / 1e6:.2f} M tokens")

    # One pass: 2 streams x chunks of 64 documents; rows for ~97% of the tokens (the last rows of a pass are partial)
    batches = int(tokens * 0.97 / args.seq_len)
    settings = StreamSettings(
        seq_len=args.seq_len,
        micro_batch=1,
        world_size=1,
        streams_per_process=2,
        seed=0,
        chunk_documents=64,
        total_batches=batches,
    )
    stream = PackedStream(
        table, DocumentEncoder(tok, args.seq_len, FIMConfig()), settings, rank=0, pad_id=tok.eos_token_id
    )

    def one_pass(workers: int) -> int:
        return sum(1 for _ in stream_loader(stream, num_workers=workers))

    t_raw, _ = best_of(args.repeats, lambda: tok.backend_tokenizer.encode_batch_fast(docs, add_special_tokens=False))
    streamed = batches * args.seq_len  # tokens in the rows delivered (packing efficiency ~0.99: nearly all documents)
    t_one, _ = best_of(args.repeats, lambda: one_pass(1))
    t_two, _ = best_of(args.repeats, lambda: one_pass(2))
    raw_rate, one_rate, two_rate = tokens / t_raw, streamed / t_one, streamed / t_two
    print(f"{'raw Rust encode_batch_fast (1 thread)':40s} {t_raw:7.2f} s  {raw_rate / 1e3:9.1f} k tokens/s")
    print(f"{'stream, 1 worker (tokenize+FIM+pack)':40s} {t_one:7.2f} s  {one_rate / 1e3:9.1f} k tokens/s")
    print(f"{'stream, 2 workers':40s} {t_two:7.2f} s  {two_rate / 1e3:9.1f} k tokens/s")
    print(f"1 worker / raw     = {one_rate / raw_rate:.3f}   (target >= 0.85)")
    cores = os.cpu_count()
    print(f"2 workers / 1      = {two_rate / one_rate:.3f}   (target >= 1.7 on an idle machine; {cores} CPUs here)")


# ---------------------------------------------------------------------------------------------------------------
# Resume cost: driven through subprocesses running this file with --driver
# ---------------------------------------------------------------------------------------------------------------


def _driver(mode: str, out: str, steps: int, checkpoint: str | None) -> None:
    """Inside a subprocess: train (saving at step 2 and `steps`), or resume and stop after the first step."""
    started = time.perf_counter()
    from transformers import TrainerCallback

    from codellama_hf.training import run_stage

    class SaveAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            control.should_save = state.global_step in (2, steps)

        def on_save(self, args, state, control, **kwargs):
            if state.global_step == steps:
                os._exit(0)

    class FirstStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            print(json.dumps({"first_step_s": time.perf_counter() - started, "step": state.global_step}), flush=True)
            os._exit(0)

    argv = [
        "--output_dir",
        out,
        "--seq_len",
        "128",
        "--tokens_per_step",
        "256",
        "--per_device_train_batch_size",
        "2",
        "--max_steps",
        str(steps + 10),
        "--save_steps",
        str(10**9),
        "--logging_steps",
        "1000",
        "--report_to",
        "none",
        "--overwrite_output_dir",
        "false",
        "--dataloader_num_workers",
        "2",
        "--warmup_steps",
        "1",
        "--disable_tqdm",
        "true",
    ]
    if mode == "train":
        run_stage("code", argv=argv, callbacks=[SaveAt()])
    else:
        run_stage("code", argv=[*argv, "--resume_from_checkpoint", checkpoint], callbacks=[FirstStep()])


def _run(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, __file__, "--driver", *args],
        env={**os.environ, **ENV, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        raise RuntimeError(f"driver {args} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def resume_cost(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "run")
        started = time.perf_counter()
        _run("train", out, str(args.resume_steps), "-")
        took = time.perf_counter() - started
        print(f"tiny run to step {args.resume_steps:,}: {took:.0f} s (checkpoints at 2 and there)")
        times = {}
        for step in (2, args.resume_steps):
            measured = []
            for _ in range(args.repeats):
                lines = _run("resume", out, str(args.resume_steps), f"{out}/checkpoint-{step}").splitlines()
                result = json.loads(next(line for line in lines if line.startswith('{"first_step_s"')))
                assert result["step"] == step + 1, result
                measured.append(result["first_step_s"])
            times[step] = min(measured)
            print(f"resume at step {step:>6,}: {times[step]:6.2f} s from launch to the end of step {step + 1:,}")
        print(
            f"ratio step {args.resume_steps:,} / step 2 = {times[args.resume_steps] / times[2]:.3f}   (target <= 1.2)"
        )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--driver":
        mode, out, steps, checkpoint = sys.argv[2:6]
        _driver(mode, out, int(steps), None if checkpoint == "-" else checkpoint)
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=2000)
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--resume-steps", type=int, default=2000)
    parser.add_argument("--skip-resume", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    os.environ.update(ENV)
    if not args.skip_throughput:
        throughput(args)
    if not args.skip_resume:
        resume_cost(args)


if __name__ == "__main__":
    main()
