"""Documents/s of near-deduplication (MinHash LSH) on the embedded corpus, and how it scales from 1 to 2 processes.

Corpus: the embedded "python" and "code" corpora together (they share files, so there are real duplicates), held in
memory so that no `datasets` cache is involved. Measured in the same run:
  (a) baseline: the textbook datasketch loop, one process: `MinHash.update_batch` on the UTF-8 word 5-gram shingles
      (datasketch's default SHA-1 hashing), `MinHashLSH.insert` every document, then `query` each one;
  (b) ours, 1 process: `codellama_hf.corpus.dedup` (numpy shingle hashing, datasketch MinHash, banded bucketing);
  (c) ours, 2 processes: the same with `num_proc=2` (signatures by `datasets.map`, bands bucketed in 2 processes).
Prints documents/s, the ratios b/a and c/b (the scaling from 1 to 2 processes; at most 2.0 on 2 idle cores), and
checks that 1 and 2 processes find the same clusters.

    PYTHONPATH=. python bench/dedup.py [--documents 4000] [--num-perm 128] [--threshold 0.85] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os

import datasets
import numpy as np
from datasketch import MinHash, MinHashLSH
from timing import best_of  # bench/timing.py

from codellama_hf.corpus import DedupConfig, embedded_corpus
from codellama_hf.corpus.dedup import TOKEN, near_duplicate_clusters, signatures


def textbook(texts: list[str], config: DedupConfig) -> int:
    """The plain datasketch recipe; returns how many documents have an earlier near-duplicate."""
    lsh = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm)
    sketches = []
    for i, text in enumerate(texts):
        tokens = TOKEN.findall(text)
        grams = {
            " ".join(tokens[j : j + config.ngram]).encode() for j in range(max(1, len(tokens) - config.ngram + 1))
        }
        minhash = MinHash(num_perm=config.num_perm, seed=config.seed)
        minhash.update_batch(list(grams))
        lsh.insert(i, minhash)
        sketches.append(minhash)
    return sum(any(j < i for j in lsh.query(m)) for i, m in enumerate(sketches))


def ours(dataset, config: DedupConfig, num_proc: int) -> np.ndarray:
    return near_duplicate_clusters(signatures(dataset, config, num_proc=num_proc), config, num_proc=num_proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=4000)
    parser.add_argument("--num-perm", type=int, default=128)
    parser.add_argument("--threshold", type=float, default=0.85)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    datasets.disable_progress_bars()
    texts = [t for kind in ("python", "code") for t in embedded_corpus(kind)["text"]][: args.documents]
    dataset = datasets.Dataset.from_dict({"text": texts})  # in memory: nothing cached between runs
    config = DedupConfig(threshold=args.threshold, num_perm=args.num_perm)
    megabytes = sum(len(t.encode("utf-8", "surrogatepass")) for t in texts) / 1e6
    print(
        f"{len(texts)} documents, {megabytes:.1f} MB, num_perm {config.num_perm}, threshold {config.threshold}, "
        f"bands x rows {config.bands()}, {os.cpu_count()} CPUs"
    )

    t_base, base_dups = best_of(args.repeats, lambda: textbook(texts, config))
    t_one, one = best_of(args.repeats, lambda: ours(dataset, config, 1))
    t_two, two = best_of(args.repeats, lambda: ours(dataset, config, 2))
    assert np.array_equal(one, two), "1 and 2 processes disagree"
    dups = int((one != np.arange(len(one))).sum())

    rate = {name: len(texts) / t for name, t in (("base", t_base), ("one", t_one), ("two", t_two))}
    print(f"(a) datasketch textbook, 1 process : {rate['base']:8.1f} docs/s  ({base_dups} near-duplicates)")
    print(f"(b) ours, 1 process                : {rate['one']:8.1f} docs/s  ({dups} near-duplicates)")
    print(f"(c) ours, 2 processes              : {rate['two']:8.1f} docs/s  (same clusters as 1 process)")
    print(
        f"ratio b/a = {rate['one'] / rate['base']:.2f}x   "
        f"scaling c/b (1 -> 2 processes) = {rate['two'] / rate['one']:.2f}x"
    )


if __name__ == "__main__":
    main()
