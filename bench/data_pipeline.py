"""The streaming data path against raw batched Rust tokenization, and the cost of resuming early vs late in a run.

1. Throughput. Corpus: the Python standard library's sources on this machine, tokenized by Code Llama's tokenizer.
   Baseline, in the same run: the Rust tokenizer's `encode_batch_fast` on a Python list in this process, one thread
   (TOKENIZERS_PARALLELISM=false): the bare cost of tokenizing, a lower bound for any pipeline. Measured: one pass
   of the stream (data/stream.py: shard, tokenize, FIM at 0.9, pack into seq_len rows, collate to tensors) through
   its DataLoader with 1 and with 2 workers. Start-up (building the encoders once in this process, and a fresh
   DataLoader's launch to its first batch: forking workers, the first chunk) is reported on its own; the throughput
   is a second whole pass over the corpus by the same workers, already up (persistent workers; a training run pays
   start-up once). Rounds interleave raw, 1 worker and 2 workers and each keeps its best, so a load spike
   from other processes hits all three alike; the load average and each worker's CPU time are printed with them.
   Targets: 1 worker >= 0.85 of raw; 2 workers >= 1.7x 1 worker (on an idle machine with >= 2 free cores: each
   worker is a process).
2. Resume cost. A tiny code-stage run (Code Llama tokenizer shape, seq_len 128) saves checkpoints at steps 2 and
   2,000; each is then resumed in a fresh process and timed from launch to the end of its first optimizer step.
   Target: step 2,000 / step 2 <= 1.2. For reference it also times what a replaying resume would redo at step
   2,000: reading, tokenizing and packing the 2,000 steps' micro-batches.

    python bench/data_pipeline.py [--documents 1000] [--seq-len 4096] [--repeats 3] [--resume-steps 2000]
                                  [--skip-resume] [--skip-throughput]
"""

from __future__ import annotations

import argparse
import itertools
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


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _pass(stream, workers: int) -> dict:
    """A fresh DataLoader: launch to its first batch (start-up), then, once that first pass is over, a second whole
    pass by the same warm workers (persistent), timed: no start-up in it, and no work left over from the first."""
    from codellama_hf.data.stream import stream_loader

    loader = stream_loader(stream, num_workers=workers, persistent_workers=True)
    started = time.perf_counter()
    first_pass = iter(loader)
    next(first_pass)
    first = time.perf_counter() - started
    sum(1 for _ in first_pass)
    pids = [w.pid for w in loader._iterator._workers]  # the DataLoader's worker processes (a private field)
    cpu = [_cpu_seconds(p) for p in pids]
    started, main_cpu = time.perf_counter(), time.process_time()
    batches = sum(1 for _ in loader)
    took, main_cpu = time.perf_counter() - started, time.process_time() - main_cpu
    cpu = [_cpu_seconds(p) - c for p, c in zip(pids, cpu, strict=True)]
    del loader
    return {"first": first, "pass": took, "batches": batches, "cpu": cpu, "main_cpu": main_cpu}


def throughput(args) -> None:
    import datasets
    from transformers import AutoTokenizer

    from codellama_hf.assets import llama2_tokenizer_dir
    from codellama_hf.data.fim import FIMConfig
    from codellama_hf.data.stream import DocumentEncoder, PackedStream, StreamSettings
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
    print(f"machine: {os.cpu_count()} CPUs, load average {_load()} (1, 5, 15 min) before")

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
    started = time.perf_counter()
    encoder = DocumentEncoder(tok, args.seq_len, FIMConfig())  # builds the Rust encoders, once, before any fork
    built = time.perf_counter() - started
    stream = PackedStream(table, encoder, settings, rank=0, pad_id=tok.eos_token_id)
    streamed = batches * args.seq_len  # tokens in the rows delivered (packing efficiency ~0.99)

    raw, runs = [], {1: [], 2: []}
    for _ in range(args.repeats):
        started, cpu = time.perf_counter(), time.process_time()
        tok.backend_tokenizer.encode_batch_fast(docs, add_special_tokens=False)
        raw.append((time.perf_counter() - started, time.process_time() - cpu))
        for workers in runs:
            runs[workers].append(_pass(stream, workers))
    t_raw, cpu_raw = min(raw)
    best = {w: min(r, key=lambda x: x["pass"]) for w, r in runs.items()}
    assert all(b["batches"] == batches for b in best.values()), best
    raw_rate = tokens / t_raw
    print(f"{'':44s} {'wall s':>8s} {'k tokens/s':>11s} {'start-up s':>11s}  worker CPU s (main CPU s)")
    print(f"{'raw Rust encode_batch_fast (1 thread)':44s} {t_raw:8.2f} {raw_rate / 1e3:11.1f} {'':11s}  {cpu_raw:.2f}")
    for w, b in best.items():
        label = f"stream, {w} worker{'s' if w > 1 else ''} (tokenize+FIM+pack+collate)"
        cpu = " ".join(f"{c:.2f}" for c in b["cpu"])
        print(
            f"{label:44s} {b['pass']:8.2f} {streamed / b['pass'] / 1e3:11.1f} {b['first']:11.2f}  {cpu} "
            f"({b['main_cpu']:.2f})"
        )
    print(f"encoders built once in the parent: {built:.2f} s (workers inherit them)")
    one, two = streamed / best[1]["pass"], streamed / best[2]["pass"]
    print(f"1 worker / raw      = {one / raw_rate:.3f}   (target >= 0.85)")
    cpu_ratio = (tokens / cpu_raw) / (streamed / sum(best[1]["cpu"])) if sum(best[1]["cpu"]) and cpu_raw else 0
    print(f"  the same in CPU time (raw tokens per CPU s / worker's) = {1 / cpu_ratio if cpu_ratio else 0:.3f}")
    print(f"2 workers / 1       = {two / one:.3f}   (target >= 1.7 on an idle machine with >= 2 free cores)")
    # the main process receives every batch too: with 2 workers on 2 cores, 3 processes share them
    busy = sum(best[2]["cpu"]) + best[2]["main_cpu"]
    cores = os.cpu_count() or 1
    print(f"  2-worker pass: workers + main = {busy:.2f} CPU s on {cores} cores, so wall >= {busy / cores:.2f} s")
    print(f"load average after: {_load()}")


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
            result = {"first_step_s": time.perf_counter() - started, "step": state.global_step}
            if mode == "resume-replay":  # what a replaying resume would redo: the micro-batches before this step
                stream = kwargs["train_dataloader"].dataset.resumed(0, {})
                skipped = (state.global_step - 1) * args.gradient_accumulation_steps
                began = time.perf_counter()
                sum(1 for _ in itertools.islice(iter(stream), skipped))
                result["replay_s"] = time.perf_counter() - began
            print(json.dumps(result), flush=True)
            os._exit(0)

    argv = [
        "--output_dir",
        out,
        "--seq_len",
        "128",
        "--tokens_per_step",
        "128",
        "--per_device_train_batch_size",
        "1",
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
    print(f"resume cost: load average {_load()} before")
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "run")
        started = time.perf_counter()
        _run("train", out, str(args.resume_steps), "-")
        took = time.perf_counter() - started
        print(f"tiny run to step {args.resume_steps:,}: {took:.0f} s (checkpoints at 2 and there)")
        times = {}
        replay = []
        for _ in range(args.repeats):  # alternate early and late, so that a load spike hits both alike
            for step in (2, args.resume_steps):
                mode = "resume-replay" if step == args.resume_steps and not replay else "resume"
                lines = _run(mode, out, str(args.resume_steps), f"{out}/checkpoint-{step}").splitlines()
                result = json.loads(next(line for line in lines if line.startswith('{"first_step_s"')))
                assert result["step"] == step + 1, result
                times.setdefault(step, []).append(result["first_step_s"])
                replay += [result["replay_s"]] if "replay_s" in result else []
        for step, measured in times.items():
            print(
                f"resume at step {step:>6,}: {min(measured):6.2f} s from launch to the end of step {step + 1:,} "
                f"(best of {len(measured)}: {', '.join(f'{t:.2f}' for t in measured)})"
            )
        ratio = min(times[args.resume_steps]) / min(times[2])
        print(f"ratio step {args.resume_steps:,} / step 2 = {ratio:.3f}   (target <= 1.2)")
        print(
            f"for reference, a replaying resume at step {args.resume_steps:,} would first re-read, tokenize and "
            f"pack its {args.resume_steps:,} steps' micro-batches: {replay[0]:.2f} s more (in one process)"
        )
        print(f"load average after: {_load()}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--driver":
        mode, out, steps, checkpoint = sys.argv[2:6]
        _driver(mode, out, int(steps), None if checkpoint == "-" else checkpoint)
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=1000)
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
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
