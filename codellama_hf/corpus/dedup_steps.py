"""The corpus builder's deduplication steps (reading and filtering: read_steps.py).

Deduplication runs datatrove's four MinHash stages with two of them replaced:
- `Signatures` (stage 1) is a pass-through step: while the documents flow to the writer of the filtered shard it
  writes, per task, the near-duplicate bucket files and the exact-duplicate bucket in datatrove's
  `bucket_XXX/NNNNN.minhash.sig` format (sorted by datatrove's own code), plus the full signature and the cluster
  key of every document (`full/NNNNN.u32`, `keys/NNNNN.u64`, read back memory-mapped);
- datatrove's `MinhashDedupBuckets` (stage 2) finds candidate pairs bucket by bucket (one task per band), merging
  the sorted files of all tasks with bounded memory;
- `DuplicateClusters` (stage 3) is datatrove's union-find over the candidate pairs, with two changes: a near pair
  must reach the Jaccard threshold on the full signatures, and each cluster keeps its member with the smallest
  `document_key` (a hash of source and path), so the kept documents do not depend on the number of tasks. It
  writes datatrove's `NNNNNN.remove` files;
- datatrove's `MinhashDedupFilter` (stage 4) drops them while the shard is read again.
Memory: no step holds more than one task's documents in flight plus, in stage 3, the duplicate pairs.
"""

from __future__ import annotations

import json
import struct
from collections import Counter
from pathlib import Path

import numpy as np
from datatrove.data import DocumentsPipeline
from datatrove.io import get_datafolder
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
from datatrove.utils.binaryio import read_tuples_from_file
from datatrove.utils.hashing import HashConfig

from codellama_hf.corpus.dedup import (
    EXACT_WORDS,
    CodeWordTokenizer,
    DedupConfig,
    document_key,
    exact_digest,
    minhash,
)


def near_config(config: DedupConfig) -> MinhashConfig:
    bands, rows = config.bands()
    return MinhashConfig(
        n_grams=config.ngram,
        num_buckets=bands,
        hashes_per_bucket=rows,
        seed=config.seed,
        hash_config=HashConfig(precision=32),
    )


EXACT_CONFIG = MinhashConfig(num_buckets=1, hashes_per_bucket=EXACT_WORDS, hash_config=HashConfig(precision=32))


# ---------------------------------------------------------------------------------------------------------------
# Stage 1: signatures (pass-through)
# ---------------------------------------------------------------------------------------------------------------


class Signatures(PipelineStep):
    """Stage 1 of exact + near dedup, as a pass-through step (see module docstring)."""

    type = "🫂 - DEDUP"
    name = "🎯 code MinHash signatures"

    def __init__(self, folder: str, config: DedupConfig):
        super().__init__()
        self.folder = folder
        self.config = config

    def _sorter(self, kind: str, minhash_config: MinhashConfig) -> MinhashDedupSignature:
        # datatrove's own signature step sorts and verifies the bucket files it finds complete on disk.
        return MinhashDedupSignature(
            f"{self.folder}/{kind}", minhash_config, language=CodeWordTokenizer(), skip_existing_sigs=True
        )

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        folder = get_datafolder(self.folder)
        near = near_config(self.config)
        rows = near.hashes_per_bucket
        near_fmt = struct.Struct(f"<{rows}II")
        exact_fmt = struct.Struct(f"<{EXACT_WORDS}II")
        buckets = [folder.open(f"near/bucket_{b:03d}/{rank:05d}.minhash.sig", "wb") for b in range(near.num_buckets)]
        exact = folder.open(f"exact/bucket_000/{rank:05d}.minhash.sig", "wb")
        full = folder.open(f"full/{rank:05d}.u32", "wb")
        keys = folder.open(f"keys/{rank:05d}.u64", "wb")
        count = 0
        try:
            for index, doc in enumerate(data):
                with self.track_time():
                    signature = minhash(doc.text, self.config)
                    for b, handle in enumerate(buckets):
                        handle.write(near_fmt.pack(*signature[b * rows : (b + 1) * rows].tolist(), index))
                    exact.write(exact_fmt.pack(*exact_digest(doc.text).tolist(), index))
                    full.write(signature.tobytes())
                    meta = doc.metadata
                    key = document_key(meta.get("source", ""), meta.get("path", ""), doc.text)
                    keys.write(np.uint64(key).tobytes())
                    self.stat_update("documents")
                count = index + 1
                yield doc
        finally:
            for handle in (*buckets, exact, full, keys):
                handle.close()
        with self.track_time():
            if count:
                self._sorter("near", near).run(iter(()), rank, world_size)
                self._sorter("exact", EXACT_CONFIG).run(iter(()), rank, world_size)


# ---------------------------------------------------------------------------------------------------------------
# Stage 3: clusters
# ---------------------------------------------------------------------------------------------------------------


class _UnionFind:
    """Union-find over the (file, doc) nodes that appear in pairs; the root is the smallest (key, file, doc)."""

    def __init__(self, key_of):
        self.parent: dict[tuple[int, int], tuple[int, int]] = {}
        self.key_of = key_of

    def find(self, x):
        path = []
        while self.parent.get(x, x) != x:
            path.append(x)
            x = self.parent[x]
        for node in path:
            self.parent[node] = x
        return x

    def union(self, a, b) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if (self.key_of(rb), rb) < (self.key_of(ra), ra):
            ra, rb = rb, ra
        self.parent.setdefault(ra, ra)
        self.parent[rb] = ra

    def removed(self) -> set:
        return {node for node in self.parent if self.find(node) != node}


class DuplicateClusters(PipelineStep):
    """Stage 3: exact and near clusters from datatrove's duplicate pairs, one `.remove` file per stage-1 task."""

    type = "🫂 - DEDUP"
    name = "🎯 duplicate clusters"

    def __init__(self, folder: str, config: DedupConfig, tasks: int):
        super().__init__()
        self.folder = folder
        self.config = config
        self.tasks = tasks

    def _pairs(self, kind: str):
        folder = get_datafolder(f"{self.folder}/dups/{kind}")
        for name in sorted(folder.list_files(glob_pattern="*.dups")):
            with folder.open(name, "rb") as handle:
                yield from read_tuples_from_file(handle, "4I", lines_to_buffer=1000)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if world_size != 1:
            raise ValueError(f"the cluster stage runs as one task, got {world_size}")
        root = Path(self.folder)
        maps: dict[tuple[str, int], np.ndarray] = {}

        def table(kind: str, file: int) -> np.ndarray:
            if (kind, file) not in maps:
                path = root / kind / f"{file:05d}.{'u64' if kind == 'keys' else 'u32'}"
                dtype = np.uint64 if kind == "keys" else np.uint32
                array = np.memmap(path, dtype=dtype, mode="r") if path.stat().st_size else np.zeros(0, dtype)
                maps[kind, file] = array.reshape(-1, self.config.num_perm) if kind == "full" else array
            return maps[kind, file]

        def key_of(node) -> int:
            return int(table("keys", node[0])[node[1]])

        with self.track_time():
            exact = _UnionFind(key_of)
            if self.config.exact:
                for f1, d1, f2, d2 in self._pairs("exact"):
                    exact.union((f1, d1), (f2, d2))
            near = _UnionFind(key_of)
            if self.config.near:
                for f1, d1, f2, d2 in self._pairs("near"):
                    a, b = table("full", f1)[d1], table("full", f2)[d2]
                    if np.count_nonzero(a == b) >= self.config.threshold * self.config.num_perm:
                        near.union((f1, d1), (f2, d2))
                    else:
                        self.stat_update("near_candidates_below_threshold")
            exact_removed = exact.removed()
            near_removed = near.removed() - exact_removed
            # near clusters beyond the exact copies: an exact copy is a near-duplicate too, but counted as exact
            sizes = Counter(near.find(node) for node in near.parent if node not in exact_removed)
            stats = {
                "exact_removed": len(exact_removed),
                "near_removed": len(near_removed),
                "near_clusters": sum(size > 1 for size in sizes.values()),
                "largest_cluster": max(sizes.values(), default=1),
            }
            by_file: dict[int, list[int]] = {file: [] for file in range(self.tasks)}
            for file, doc in exact_removed | near_removed:
                by_file[file].append(doc)
            out = get_datafolder(f"{self.folder}/remove")
            for file, docs in by_file.items():
                with out.open(f"{file:06d}.remove", "wb") as handle:
                    handle.write(np.asarray(sorted(docs), dtype="<u4").tobytes())
            with out.open("dedup_stats.json", "w") as handle:
                json.dump(stats, handle)
            for name, value in stats.items():
                self.stat_update(name, value=value)
        return iter(())
