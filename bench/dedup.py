"""Near-deduplication throughput per core and memory growth: the corpus builder's datatrove stages against
datatrove's stock MinHash pipeline and plain datasketch, on the same documents, measured in the same run.

Documents: the embedded "python" and "code" corpora together (they share files, so there are real duplicates),
written as 4 JSONL shards that every pipeline reads.
  (a) datasketch: the textbook loop in one process (`MinHash.update_batch` on UTF-8 word 5-grams, SHA-1,
      `MinHashLSH.insert` + `query`);
  (b) datatrove stock: JsonlReader -> MinhashDedupSignature (CodeWordTokenizer, xxhash) -> MinhashDedupBuckets ->
      MinhashDedupCluster -> MinhashDedupFilter -> JsonlWriter, LocalPipelineExecutor, 4 tasks;
  (c) ours: `codellama-hf corpus build`'s stages (filters off, so only deduplication differs), 4 tasks.
(b) and (c) run with 1 and 2 workers; docs/s per core = documents / wall time / workers. Peak RSS of (c) with one
worker is measured in a fresh process at 1x and 4x the documents (the 4x copies have every word prefixed, so they
are distinct documents, not duplicates). Targets: (c)/(b) >= 2 per core; RSS(4x)/RSS(1x) <= 1.3.

    PYTHONPATH=. python bench/dedup.py [--documents 4000] [--skip-rss | --only-rss]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

THRESHOLD, NUM_PERM, NGRAM = 0.85, 128, 5


def write_shards(texts: list[str], folder: Path, shards: int = 4) -> None:
    """The documents as JSONL shards, dealt round-robin."""
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        with open(folder / f"{s:02d}.jsonl", "w") as handle:
            for i in range(s, len(texts), shards):
                handle.write(json.dumps({"text": texts[i], "path": f"doc{i:06d}.py", "id": str(i)}) + "\n")


def datasketch_loop(texts: list[str]) -> int:
    from datasketch import MinHash, MinHashLSH

    from codellama_hf.corpus.dedup import TOKEN

    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    sketches = []
    for i, text in enumerate(texts):
        tokens = TOKEN.findall(text)
        grams = {" ".join(tokens[j : j + NGRAM]).encode() for j in range(max(1, len(tokens) - NGRAM + 1))}
        minhash = MinHash(num_perm=NUM_PERM, seed=42)
        minhash.update_batch(list(grams))
        lsh.insert(i, minhash)
        sketches.append(minhash)
    return sum(any(j < i for j in lsh.query(m)) for i, m in enumerate(sketches))


def datatrove_stock(shards: Path, work: Path, workers: int) -> int:
    """datatrove's own four stages, as its MinHash example runs them; returns the documents removed."""
    import xxhash
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashes import xxhash as dt_xxhash

    from codellama_hf.corpus.dedup import CodeWordTokenizer, DedupConfig

    # datatrove 0.10.1 hashes str; xxhash >= 4.1 wants bytes. Encode, as older xxhash did implicitly.
    dt_xxhash.xxhash64 = lambda data: xxhash.xxh64_intdigest(data.encode() if isinstance(data, str) else data)
    bands, rows = DedupConfig(threshold=THRESHOLD, num_perm=NUM_PERM).bands()
    config = MinhashConfig(n_grams=NGRAM, num_buckets=bands, hashes_per_bucket=rows)
    tasks = len(list(shards.glob("*.jsonl")))

    def reader():
        return JsonlReader(str(shards))

    kw = {"start_method": "fork"}
    stage1 = LocalPipelineExecutor(
        [reader(), MinhashDedupSignature(str(work / "sigs"), config, language=CodeWordTokenizer())],
        tasks=tasks,
        workers=workers,
        logging_dir=str(work / "logs1"),
        **kw,
    )
    stage2 = LocalPipelineExecutor(
        [MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=config)],
        tasks=bands,
        workers=workers,
        logging_dir=str(work / "logs2"),
        depends=stage1,
        **kw,
    )
    stage3 = LocalPipelineExecutor(
        [MinhashDedupCluster(str(work / "buckets"), str(work / "remove"), config=config)],
        tasks=1,
        logging_dir=str(work / "logs3"),
        depends=stage2,
        **kw,
    )
    stage4 = LocalPipelineExecutor(
        [reader(), MinhashDedupFilter(str(work / "remove")), JsonlWriter(str(work / "out"))],
        tasks=tasks,
        workers=workers,
        logging_dir=str(work / "logs4"),
        depends=stage3,
        **kw,
    )
    stage4.run()
    stats = json.loads((work / "logs4" / "stats.json").read_text())
    return next(int(s["stats"].get("dropped", 0)) for s in stats if "stage 4" in s["name"])


def ours(shards: Path, out: Path, workers: int) -> int:
    """The corpus builder, filters off; returns the documents removed as duplicates."""
    from codellama_hf.corpus import BuildConfig, DedupConfig, FilterConfig, build_corpus
    from codellama_hf.corpus.pipeline import ExecutorConfig

    off = FilterConfig.off()
    tasks = len(list(shards.glob("*.jsonl")))
    config = BuildConfig(
        sources=[str(shards / "*.jsonl")],  # shards: each task reads its own
        out=str(out),
        validation_fraction=0.0,
        filters=off,
        dedup=DedupConfig(threshold=THRESHOLD, num_perm=NUM_PERM, ngram=NGRAM),
        executor=ExecutorConfig(tasks=tasks, workers=workers),
    )
    summary = build_corpus(config)
    return summary.dedup["exact_removed"] + summary.dedup["near_removed"]


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def load_texts(documents: int) -> list[str]:
    import datasets

    from codellama_hf.corpus import embedded_corpus

    datasets.disable_progress_bars()
    return [t for kind in ("python", "code") for t in embedded_corpus(kind)["text"]][:documents]


def write_variants(texts: list[str], factor: int, folder: Path, shards: int = 4) -> None:
    """`factor` x the documents as JSONL shards: copy k > 0 prefixes every word with "v<k>" (distinct documents)."""
    folder.mkdir(parents=True, exist_ok=True)
    handles = [open(folder / f"{s:02d}.jsonl", "w") for s in range(shards)]
    try:
        for k in range(factor):
            for i, text in enumerate(texts):
                variant = re.sub(r"\w+", lambda m, k=k: f"v{k}{m.group()}", text) if k else text
                row = {"text": variant, "path": f"doc{k}_{i:06d}.py", "id": f"{k}/{i}"}
                handles[(k * len(texts) + i) % shards].write(json.dumps(row) + "\n")
    finally:
        for handle in handles:
            handle.close()


def rss_child(folder: str) -> None:
    """Runs in a fresh process: our pipeline, one worker, on the shards in `folder`; prints its peak RSS (MB)."""
    from loguru import logger

    logger.remove()
    work = Path(folder)
    ours(work / "shards", work / "out", workers=1)
    print(json.dumps({"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def speeds(texts: list[str], tmp: Path, rates: dict) -> None:
    """(a), (b) and (c) on the shards in tmp/shards; docs/s per core into `rates`."""
    seconds, removed = timed(datasketch_loop, texts)
    rates["datasketch", 1] = len(texts) / seconds
    print(f"(a) datasketch loop, 1 process     : {rates['datasketch', 1]:8.1f} docs/s/core  ({removed} dups)")
    for workers in (1, 2):
        seconds, removed = timed(datatrove_stock, tmp / "shards", tmp / f"stock{workers}", workers)
        rates["stock", workers] = len(texts) / seconds / workers
        print(
            f"(b) datatrove stock, {workers} worker(s)   : {rates['stock', workers]:8.1f} docs/s/core  "
            f"({removed} removed, {seconds:.1f} s)"
        )
        seconds, removed = timed(ours, tmp / "shards", tmp / f"ours{workers}", workers)
        rates["ours", workers] = len(texts) / seconds / workers
        print(
            f"(c) ours, {workers} worker(s)              : {rates['ours', workers]:8.1f} docs/s/core  "
            f"({removed} removed, {seconds:.1f} s)"
        )
    for workers in (1, 2):
        print(
            f"ratio c/b per core, {workers} worker(s): {rates['ours', workers] / rates['stock', workers]:.2f}x "
            f"(target >= 2)"
        )
    print(f"ratio c/a per core, 1 worker: {rates['ours', 1] / rates['datasketch', 1]:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=4000)
    parser.add_argument("--skip-rss", action="store_true", help="leave out the 1x / 4x memory runs")
    parser.add_argument("--only-rss", action="store_true", help="only the 1x / 4x memory runs")
    parser.add_argument("--rss-child", metavar="FOLDER", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child)
        return

    from loguru import logger

    logger.remove()  # datatrove's progress logs; the numbers below are what this bench reports
    texts = load_texts(args.documents)
    megabytes = sum(len(t.encode("utf-8", "surrogatepass")) for t in texts) / 1e6
    print(
        f"{len(texts)} documents, {megabytes:.1f} MB, {NUM_PERM} permutations, 5-grams, Jaccard {THRESHOLD}, "
        f"{os.cpu_count()} CPUs"
    )
    rates = {}
    with tempfile.TemporaryDirectory(prefix="bench-dedup-") as tmp:
        tmp = Path(tmp)
        write_shards(texts, tmp / "shards")
        if not args.only_rss:
            speeds(texts, tmp, rates)
        if not args.skip_rss:
            rss = {}
            for factor in (1, 4):
                folder = tmp / f"rss{factor}"
                shutil.rmtree(folder, ignore_errors=True)
                write_variants(texts, factor, folder / "shards")
                cmd = [sys.executable, __file__, "--rss-child", str(folder)]
                done = subprocess.run(cmd, capture_output=True, text=True, check=True)
                rss[factor] = json.loads(done.stdout.strip().splitlines()[-1])["rss_mb"]
                print(f"peak RSS, ours, 1 worker, {factor}x documents ({factor * len(texts)}): {rss[factor]:.0f} MB")
            print(f"RSS growth 4x/1x documents: {rss[4] / rss[1]:.2f}x (target <= 1.3)")


if __name__ == "__main__":
    main()
