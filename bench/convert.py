"""Meta -> HF conversion speed and memory, against `cp` and a naive converter measured in the same run.

Writes a synthetic Meta checkpoint with full-width Llama 2 7B tensors (dim 4096, FFN 11008, 32 heads, vocab 32000,
bf16; 7 layers by default = 3.4 GB), then runs each contender in a fresh process on the same (page-cached) files:

  cp     `cp` of the shard files (the floor: read + write the same bytes)
  naive  what transformers' converter does: torch.load every shard, merge and permute, save_file
  ours   codellama_hf.convert.meta_to_hf (and hf_to_meta back, for information)

and prints wall time / cp's and (peak RSS - RSS after imports) / checkpoint bytes.
Targets for ours (issue 3): time ratio <= 2.0 (naive measured about 11), memory ratio <= 0.15 (naive >= 1.0).

    python bench/convert.py [--layers 7] [--shards 1] [--repeat 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout: `python bench/convert.py`
SHAPE = dict(dim=4096, n_heads=32, ffn=11008, vocab=32000)  # Llama 2 7B (Meta's params.json)


def rss_kib(field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of this process, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def write_checkpoint(folder: Path, layers: int, shards: int) -> int:
    """Random bf16 shards laid out as fairscale model parallelism does; returns the bytes written."""
    import torch

    from codellama_hf.assets import llama2_tokenizer_dir

    d, ffn, vocab = SHAPE["dim"], SHAPE["ffn"], SHAPE["vocab"]
    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return (torch.randn(*shape, generator=gen) * 0.02).to(torch.bfloat16)

    folder.mkdir(parents=True)
    for s in range(shards):
        sd = {"tok_embeddings.weight": rand(vocab, d // shards)}
        for i in range(layers):
            p = f"layers.{i}."
            for name in ("wq", "wk", "wv"):
                sd[p + f"attention.{name}.weight"] = rand(d // shards, d)
            sd[p + "attention.wo.weight"] = rand(d, d // shards)
            sd[p + "feed_forward.w1.weight"] = rand(ffn // shards, d)
            sd[p + "feed_forward.w2.weight"] = rand(d, ffn // shards)
            sd[p + "feed_forward.w3.weight"] = rand(ffn // shards, d)
            sd[p + "attention_norm.weight"] = torch.ones(d, dtype=torch.bfloat16)
            sd[p + "ffn_norm.weight"] = torch.ones(d, dtype=torch.bfloat16)
        sd["norm.weight"] = torch.ones(d, dtype=torch.bfloat16)
        sd["output.weight"] = rand(vocab // shards, d)
        torch.save(sd, folder / f"consolidated.{s:02d}.pth")
        del sd
    params = {
        "dim": d,
        "n_layers": layers,
        "n_heads": SHAPE["n_heads"],
        "multiple_of": 256,
        "norm_eps": 1e-5,
        "vocab_size": -1,
    }
    (folder / "params.json").write_text(json.dumps(params))
    shutil.copyfile(llama2_tokenizer_dir() / "tokenizer.model", folder / "tokenizer.model")  # Meta's, 32000 pieces
    return sum(p.stat().st_size for p in folder.glob("consolidated.*.pth"))


def naive_convert(src: Path, dst: Path) -> None:
    """Load-everything-then-save, as transformers' convert_llama_weights_to_hf.py does (it loads every shard into
    memory)."""
    import torch
    from safetensors.torch import save_file

    from codellama_hf.convert import LlamaShape, meta_to_hf_rotary, weights

    params = json.loads((src / "params.json").read_text())
    loaded = [torch.load(p, map_location="cpu", weights_only=True) for p in sorted(src.glob("consolidated.*.pth"))]
    shape = LlamaShape.from_params(params, loaded[0]["tok_embeddings.weight"].shape[0], src / "params.json")
    state = {}
    for w in weights(shape):
        parts = [sd[w.meta] for sd in loaded]
        tensor = parts[0].clone() if w.split is None else torch.cat(parts, dim=w.split)
        state[w.hf] = meta_to_hf_rotary(tensor, shape.head_dim) if w.rotary else tensor
    dst.mkdir()
    save_file(state, dst / "model.safetensors", metadata={"format": "pt"})


def cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def worker(kind: str, src: Path, dst: Path) -> None:
    """Runs in a fresh process: imports, then the conversion; prints wall and CPU time and RSS figures as JSON."""
    import torch  # noqa: F401  (imports count as baseline RSS, not as conversion memory)

    from codellama_hf import convert

    base = rss_kib("VmRSS")
    cpu = cpu_seconds(resource.RUSAGE_SELF)
    start = time.perf_counter()
    if kind == "ours":
        convert.meta_to_hf(src, dst, progress=False)
    elif kind == "ours-back":
        convert.hf_to_meta(src, dst, progress=False)
    else:
        naive_convert(src, dst)
    wall = time.perf_counter() - start
    cpu = cpu_seconds(resource.RUSAGE_SELF) - cpu
    print(json.dumps({"wall": wall, "cpu": cpu, "base_kib": base, "peak_kib": rss_kib("VmHWM")}))


def run(kind: str, src: Path, dst: Path) -> dict:
    os.sync()  # start each contender without the previous one's dirty pages
    done = subprocess.run(
        [sys.executable, __file__, "--worker", kind, str(src), str(dst)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    if done.returncode:
        raise SystemExit(f"{kind} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def time_cp(src: Path, dst: Path) -> dict:
    os.sync()
    dst.mkdir()
    cpu, start = cpu_seconds(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run(["cp", *map(str, sorted(src.glob("consolidated.*.pth"))), str(dst)], check=True)
    return {"wall": time.perf_counter() - start, "cpu": cpu_seconds(resource.RUSAGE_CHILDREN) - cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=7, help="7B-shaped layers (7 -> 3.4 GB)")
    parser.add_argument("--shards", type=int, default=1, help="model-parallel shards of the synthetic checkpoint")
    parser.add_argument("--repeat", type=int, default=3, help="alternating cp / ours runs (medians compared)")
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a temporary one, removed after)")
    parser.add_argument("--worker", nargs=3, metavar=("KIND", "SRC", "DST"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, src, dst = args.worker
        return worker(kind, Path(src), Path(dst))

    work = Path(tempfile.mkdtemp(prefix="bench-convert-", dir=args.workdir))
    try:
        src = work / "meta"
        size = write_checkpoint(src, args.layers, args.shards)
        print(f"synthetic checkpoint: {args.layers} layers of Llama 2 7B, {args.shards} shard(s), {size / 1e9:.2f} GB")
        # cp and ours alternate `--repeat` times: the disk and CPUs are shared and noisy, so each ours run is
        # compared with the cp run just before it, and the median of those ratios is the figure.
        cp_runs, ours_runs = [], []
        for i in range(args.repeat):
            cp_runs.append(time_cp(src, work / "cp"))
            shutil.rmtree(work / "cp")
            ours_runs.append(run("ours", src, work / "ours"))
            if i < args.repeat - 1:
                shutil.rmtree(work / "ours")
        cp_wall = statistics.median(r["wall"] for r in cp_runs)
        results = {"naive": run("naive", src, work / "naive")}
        shutil.rmtree(work / "naive")
        results["ours"] = sorted(ours_runs, key=lambda r: r["wall"])[len(ours_runs) // 2]
        results["ours-back"] = run("ours-back", work / "ours", work / "back")  # HF -> Meta, for information

        cp_cpu = statistics.median(r["cpu"] for r in cp_runs)
        print(
            f"cp: median {cp_wall:.2f} s of {[round(r['wall'], 2) for r in cp_runs]} ({size / cp_wall / 1e9:.2f} "
            f"GB/s), CPU {cp_cpu:.2f} s; ours (meta-to-hf): {[round(r['wall'], 2) for r in ours_runs]}"
        )
        print(
            f"{'':10} {'wall s':>8} {'÷ cp med':>9} {'CPU s':>7} {'÷ cp':>6} {'peak RSS growth GB':>19} "
            f"{'÷ checkpoint':>13}"
        )
        for kind, r in results.items():
            growth = (r["peak_kib"] - r["base_kib"]) * 1024
            print(
                f"{kind:10} {r['wall']:8.2f} {r['wall'] / cp_wall:9.2f} {r['cpu']:7.2f} {r['cpu'] / cp_cpu:6.2f} "
                f"{growth / 1e9:19.2f} {growth / size:13.3f}"
            )
        time_ratio = statistics.median(r["wall"] / cp["wall"] for r, cp in zip(ours_runs, cp_runs, strict=False))
        mem_ratio = max((r["peak_kib"] - r["base_kib"]) * 1024 / size for r in ours_runs)
        verdict = {True: "ok", False: "MISSED"}
        print(
            f"meta-to-hf targets: time ÷ cp (median of pairs) {time_ratio:.2f} "
            f"(<= 2.0: {verdict[time_ratio <= 2.0]}), RSS growth ÷ checkpoint {mem_ratio:.3f} "
            f"(<= 0.15: {verdict[mem_ratio <= 0.15]})"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
