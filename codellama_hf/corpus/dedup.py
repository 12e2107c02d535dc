"""Signatures for exact and near deduplication of code, in the on-disk format of datatrove's MinHash stages.

Near-duplicate detection follows the BigCode/The Stack recipe (Kocetkov et al. 2022, §3; Allal et al. 2023):
- shingles: 5-grams of the `\\w+` tokens of a document (`CodeWordTokenizer`), so whitespace, indentation and
  punctuation changes do not count, and renaming one variable changes only the shingles that touch it. datatrove's
  stock signature step lower-cases and strips the text and needs a natural-language word tokenizer (spaCy/NLTK);
- signatures: `num_perm` (128) affine permutations h -> a*h + b mod 2**32 (odd a) of 32-bit shingle hashes,
  computed for a whole document at once with numpy (`minhash`); shingle hashes hash each distinct token once
  (xxh3) and combine n of them with a polynomial and the splitmix64 finaliser (`shingle_hashes`), where datatrove's
  stock step joins and hashes every n-gram string in Python (bench/dedup.py compares them);
- candidates: LSH banding with the (bands, rows) that datasketch's `MinHashLSH` picks for the Jaccard threshold
  (0.85 by default: 8 bands of 16 rows at 128 permutations), written as datatrove's `bucket_XXX/NNNNN.minhash.sig`
  files so that datatrove's `MinhashDedupBuckets` finds the pairs;
- a candidate pair counts only when its estimated Jaccard similarity (share of equal signature values) reaches the
  threshold (steps.DuplicateClusters reads the full signatures for that).

Exact duplicates use the same machinery: a one-band "signature" made of the 128-bit blake2b digest of the text.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from datatrove.utils.word_tokenizers import WordTokenizer

TOKEN = re.compile(r"\w+")
_GOLDEN, _MIX1, _MIX2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
EXACT_WORDS = 4  # 32-bit words of the exact-duplicate digest (128 bits)


@dataclass(frozen=True)
class DedupConfig:
    exact: bool = True
    near: bool = True
    threshold: float = 0.85  # Jaccard similarity at which two documents count as near-duplicates
    num_perm: int = 128
    ngram: int = 5
    seed: int = 42  # permutation seed

    def __post_init__(self):
        if not 0 < self.threshold <= 1:
            raise ValueError(f"dedup threshold is a Jaccard similarity in (0, 1], got {self.threshold!r}")
        if self.num_perm < 2 or self.ngram < 1:
            raise ValueError(f"dedup needs num_perm >= 2 and ngram >= 1, got {self.num_perm}, {self.ngram}")

    def bands(self) -> tuple[int, int]:
        """(bands, rows per band) that datasketch's MinHashLSH chooses for this threshold and num_perm."""
        return _bands(self.threshold, self.num_perm)


@dataclass
class DedupStats:
    exact_removed: int = 0
    near_removed: int = 0
    near_clusters: int = 0  # clusters of two or more near-duplicates
    largest_cluster: int = 0


@lru_cache(maxsize=16)
def _bands(threshold: float, num_perm: int) -> tuple[int, int]:
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    return lsh.b, lsh.r


class CodeWordTokenizer(WordTokenizer):
    """datatrove word tokenizer for source code: `\\w+` runs, no lower-casing, no sentence model."""

    def __init__(self):
        super().__init__("code")

    def word_tokenize(self, text: str) -> list[str]:
        return TOKEN.findall(text)

    def sent_tokenize(self, text: str) -> list[str]:
        return text.splitlines()

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in TOKEN.finditer(text)]


def shingle_hashes(text: str, ngram: int, *, distinct: bool = True) -> np.ndarray:
    """32-bit hashes of the word n-grams of `text` (a text without words gives one empty shingle); `distinct`
    drops repeats (MinHash does not need that: a repeated shingle cannot change a minimum)."""
    import xxhash

    tokens = TOKEN.findall(text) or [""]
    table = {t: xxhash.xxh3_64_intdigest(t.encode("utf-8", "surrogatepass")) for t in dict.fromkeys(tokens)}
    token_hashes = np.fromiter(map(table.__getitem__, tokens), dtype=np.uint64, count=len(tokens))
    width = min(ngram, len(token_hashes))
    count = len(token_hashes) - width + 1
    acc = np.zeros(count, dtype=np.uint64)
    for j in range(width):  # uint64 arithmetic wraps modulo 2**64, as a hash should
        acc = acc * _GOLDEN + token_hashes[j : j + count]
    acc = (acc ^ (acc >> np.uint64(30))) * _MIX1
    acc = (acc ^ (acc >> np.uint64(27))) * _MIX2
    acc ^= acc >> np.uint64(31)
    hashes = (acc >> np.uint64(32)).astype(np.uint32)
    return np.unique(hashes) if distinct else hashes


@lru_cache(maxsize=8)
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) of the affine permutations, uint32; a is odd, so h -> a*h + b is a bijection modulo 2**32."""
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint64).astype(np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint64).astype(np.uint32)
    return a, b


def minhash(text: str, config: DedupConfig) -> np.ndarray:
    """MinHash signature of `text`, shape (num_perm,), uint32."""
    a, b = permutations(config.num_perm, config.seed)
    hashes = shingle_hashes(text, config.ngram, distinct=False)[:, None]
    with np.errstate(over="ignore"):
        return (hashes * a + b).min(axis=0)


def exact_digest(text: str) -> np.ndarray:
    """128-bit digest of the UTF-8 text as EXACT_WORDS uint32: the one-band signature of exact deduplication."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=4 * EXACT_WORDS).digest()
    return np.frombuffer(digest, dtype="<u4")


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    return float(np.mean(sig_a == sig_b))


def document_key(source: str, path: str, text: str) -> int:
    """64-bit key that picks the kept member of a duplicate cluster (the smallest), whatever the task count."""
    name = f"{source}\0{path}" if path else f"\0{text}"
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
