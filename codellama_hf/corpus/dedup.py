"""Exact and near deduplication: content hashes, then MinHash LSH (datasketch) over word 5-gram shingles.

Near-duplicate detection, as in the BigCode/The Stack pipelines:
- shingles: 5-grams of the `\\w+` tokens of a document, so whitespace, indentation and punctuation changes do not
  count, and renaming one variable changes only the shingles that touch it;
- signatures: datasketch `MinHash` (its default "affine32" permutations) with `num_perm` permutations (128 by
  default) and a fixed permutation seed, fed 32-bit shingle hashes computed with numpy (`shingle_hashes`);
- candidates: LSH banding with the (bands, rows) that datasketch's `MinHashLSH` picks for the Jaccard threshold
  (0.85 by default: 8 bands of 16 rows at 128 permutations);
- a candidate pair is kept only when its estimated Jaccard similarity (share of equal signature values) reaches the
  threshold; clusters are the connected components of kept pairs and each keeps its first document.

Scaling: signatures are computed by `datasets.map(num_proc=N)`, and the LSH bands are bucketed in N processes (each
process buckets a subset of the bands over all documents), so the work splits across processes and no process
holds more than its bands. Only the union-find over candidate pairs runs in the main process.
Memory: the signatures take n x num_perm x 4 bytes in the main process (0.5 GB per million documents at 128);
beyond that, build per language or per source and deduplicate each.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from multiprocessing import get_context

import numpy as np

log = logging.getLogger(__name__)

TOKEN = re.compile(r"\w+")
_GOLDEN, _MIX1, _MIX2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


@dataclass(frozen=True)
class DedupConfig:
    exact: bool = True
    near: bool = True
    threshold: float = 0.85  # Jaccard similarity at which two documents count as near-duplicates
    num_perm: int = 128
    ngram: int = 5
    seed: int = 42  # MinHash permutation seed

    def __post_init__(self):
        if not 0 < self.threshold <= 1:
            raise ValueError(f"dedup threshold is a Jaccard similarity in (0, 1], got {self.threshold!r}")
        if self.num_perm < 2 or self.ngram < 1:
            raise ValueError(f"dedup needs num_perm >= 2 and ngram >= 1, got {self.num_perm}, {self.ngram}")

    def bands(self) -> tuple[int, int]:
        """(bands, rows per band) that datasketch's MinHashLSH chooses for this threshold and num_perm."""
        from datasketch import MinHashLSH

        lsh = MinHashLSH(threshold=self.threshold, num_perm=self.num_perm)
        return lsh.b, lsh.r


@dataclass
class DedupStats:
    exact_removed: int = 0
    near_removed: int = 0
    near_clusters: int = 0  # clusters of two or more near-duplicates
    largest_cluster: int = 0


def shingle_hashes(text: str, ngram: int) -> np.ndarray:
    """Distinct 32-bit hashes of the word n-grams of `text`.

    Each distinct token is hashed once (blake2b), and the n-gram hash is a polynomial of its tokens' hashes mixed
    with the splitmix64 finaliser, computed for all positions at once with numpy.
    """
    tokens = TOKEN.findall(text) or [""]
    vocab: dict[str, int] = {}
    ids = [vocab.setdefault(token, len(vocab)) for token in tokens]
    token_hashes = np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(t.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
            for t in vocab
        ),
        dtype=np.uint64,
        count=len(vocab),
    )[ids]
    width = min(ngram, len(token_hashes))
    count = len(token_hashes) - width + 1
    acc = np.zeros(count, dtype=np.uint64)
    for j in range(width):  # uint64 arithmetic wraps modulo 2**64, as a hash should
        acc = acc * _GOLDEN + token_hashes[j : j + count]
    acc = (acc ^ (acc >> np.uint64(30))) * _MIX1
    acc = (acc ^ (acc >> np.uint64(27))) * _MIX2
    acc ^= acc >> np.uint64(31)
    return np.unique((acc >> np.uint64(32)).astype(np.uint32))


def _signatures(batch: dict, *, num_perm: int, ngram: int, seed: int) -> dict:
    from datasketch import MinHash

    out = []
    for text in batch["text"]:
        # The shingles arrive already hashed to 32 bits, so the MinHash's hash function is the identity.
        minhash = MinHash(num_perm=num_perm, seed=seed, hashfunc=int)
        minhash.update_batch(shingle_hashes(text, ngram).tolist())
        out.append(minhash.hashvalues.astype(np.uint32))
    return {"_minhash": out}


def signatures(dataset, config: DedupConfig, *, num_proc: int | None = None) -> np.ndarray:
    """MinHash signatures of every document's `text`, shape (n, num_perm), uint32."""
    if len(dataset) == 0:
        return np.zeros((0, config.num_perm), dtype=np.uint32)
    kwargs = {"num_perm": config.num_perm, "ngram": config.ngram, "seed": config.seed}
    mapped = dataset.select_columns(["text"]).map(
        _signatures,
        fn_kwargs=kwargs,
        batched=True,
        batch_size=256,
        remove_columns=["text"],
        num_proc=num_proc if num_proc and num_proc > 1 and len(dataset) >= 2 * num_proc else None,
        desc="minhash",
    )
    return np.asarray(mapped.with_format("numpy")["_minhash"], dtype=np.uint32).reshape(len(dataset), -1)


def _band_pairs(bands: np.ndarray) -> np.ndarray:
    """Candidate pairs (first document of a bucket, another member) for bands given as (n, bands, rows)."""
    pairs = [np.zeros((0, 2), dtype=np.int64)]
    for b in range(bands.shape[1]):
        keys = np.ascontiguousarray(bands[:, b, :]).view(np.dtype((np.void, bands.shape[2] * bands.itemsize)))
        _, first, inverse = np.unique(keys.ravel(), return_index=True, return_inverse=True)
        leader = first[inverse.ravel()]
        member = np.nonzero(leader != np.arange(len(leader)))[0]
        pairs.append(np.stack([leader[member], member], axis=1))
    return np.concatenate(pairs)


def near_duplicate_clusters(sigs: np.ndarray, config: DedupConfig, *, num_proc: int = 1) -> np.ndarray:
    """Cluster id (= index of the cluster's first document) for every document.

    Each band's buckets give pairs (bucket's first document, member); `num_proc` processes bucket disjoint sets of
    bands. Pairs whose estimated Jaccard similarity is below the threshold are dropped before union-find.
    """
    n = len(sigs)
    parent = np.arange(n)
    if n < 2:
        return parent
    b, r = config.bands()
    banded = sigs[:, : b * r].reshape(n, b, r)
    groups = [banded[:, g, :] for g in np.array_split(np.arange(b), max(1, min(num_proc, b))) if len(g)]
    if len(groups) > 1:
        with get_context("fork").Pool(len(groups)) as pool:
            found = pool.map(_band_pairs, groups)
    else:
        found = [_band_pairs(g) for g in groups]
    candidates = np.unique(np.concatenate(found), axis=0)
    verified = [
        chunk[(sigs[chunk[:, 0]] == sigs[chunk[:, 1]]).mean(axis=1) >= config.threshold]
        for chunk in np.array_split(candidates, max(1, len(candidates) // 1_000_000))
    ]
    pairs = np.concatenate(verified) if verified else candidates

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, c in pairs:
        ra, rc = find(a), find(c)
        if ra != rc:
            parent[max(ra, rc)] = min(ra, rc)  # the earliest document leads the cluster
    return np.array([find(i) for i in range(n)])


def _content_hashes(batch: dict) -> dict:
    return {"_sha256": [hashlib.sha256(t.encode("utf-8", "surrogatepass")).digest() for t in batch["text"]]}


def exact_duplicate_mask(dataset, *, num_proc: int | None = None) -> np.ndarray:
    """True for the first occurrence of each distinct text (SHA-256 of the UTF-8 bytes, hashed in parallel)."""
    hashed = dataset.select_columns(["text"]).map(
        _content_hashes,
        batched=True,
        remove_columns=["text"],
        desc="content hash",
        num_proc=num_proc if num_proc and num_proc > 1 and len(dataset) >= 2 * num_proc else None,
    )
    seen: set[bytes] = set()
    keep = np.zeros(len(dataset), dtype=bool)
    for i, digest in enumerate(hashed["_sha256"]):
        if digest not in seen:
            seen.add(digest)
            keep[i] = True
    return keep


def deduplicate(dataset, config: DedupConfig | None = None, *, num_proc: int = 1):
    """Drop exact then near duplicates of `dataset` (keeping each cluster's first document).

    Returns (dataset, DedupStats).
    """
    config = config or DedupConfig()
    stats = DedupStats()
    if config.exact and len(dataset):
        keep = exact_duplicate_mask(dataset, num_proc=num_proc)
        stats.exact_removed = int((~keep).sum())
        if stats.exact_removed:
            dataset = dataset.select(np.nonzero(keep)[0])
    if config.near and len(dataset) > 1:
        clusters = near_duplicate_clusters(signatures(dataset, config, num_proc=num_proc), config, num_proc=num_proc)
        _, sizes = np.unique(clusters, return_counts=True)
        stats.near_clusters = int((sizes > 1).sum())
        stats.largest_cluster = int(sizes.max())
        keep = clusters == np.arange(len(clusters))
        stats.near_removed = int((~keep).sum())
        if stats.near_removed:
            dataset = dataset.select(np.nonzero(keep)[0])
    log.info("dedup: %s", stats)
    return dataset, stats
