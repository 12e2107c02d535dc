"""Fill-in-the-middle, exactly as Code Llama trains it (paper §2.3).

Per document, with probability `rate` (0.9), and only when the transformed document fits in one training context:
two split points drawn uniformly over the document's characters give prefix / middle / suffix; half of the
samples are laid out PSM, half SPM:

    PSM  <s> ▁<PRE> enc(prefix) ▁<SUF> enc_nospace(suffix) ▁<MID> enc_nospace(middle) ▁<EOT>
    SPM  <s> ▁<PRE> ▁<SUF> enc_nospace(suffix) ▁<MID> enc(prefix + middle) ▁<EOT>

`enc` is Meta's `encode` (implicit leading space) and `enc_nospace` Meta's `encode_infilling`. On a byte-level BPE
base (tokenizer/bpe.py) the sentinels are <PRE> <SUF> <MID> <EOT>, `enc` and `enc_nospace` are both the plain
byte-level encoding, and <s> is there only if the tokenizer adds a BOS itself. A PSM sample starts
with Meta's PSM inference prompt; an SPM sample agrees with the SPM prompt up to and including ▁<MID>, after which it
carries prefix and middle encoded together (the model never sees a split sub-token there). Documents that are not
transformed are `<s> enc(text) </s>`.

Only documents that fit uncut in one context (`<s> text </s>` within `seq_len`) are candidates, and a candidate whose
FIM sample would not fit (splitting can cost a few tokens) stays plain and is counted. Longer documents are cut into
chunks by packing, and chunks are never transformed.

Every random choice comes from a counter-based generator keyed by (seed, document identity, epoch): BLAKE2b of those
three values. The same document gets the same decision in any worker, any process count, any order and after a
resume. The identity is the document's text unless identities are given: the streaming path (stream.py) passes the
document's row in its table, so that copies of one text within a pass (a token-balanced mixture repeats a small
component until the large one is used up, corpus/mixture.py) get splits of their own, and every pass over the
table (the epoch) draws new ones.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from codellama_hf.tokenizer import adds_bos, encode_batch, encode_slices, infill_ids

logger = logging.getLogger(__name__)

# Values of the per-sample `fim` field.
PLAIN, PSM, SPM, TOO_LONG = 0, 1, 2, 3
KIND_NAMES = {PLAIN: "plain", PSM: "psm", SPM: "spm", TOO_LONG: "plain (FIM sample too long)"}
# A FIM sample needs <s>, the four sentinels and at least one token of text.
MIN_FIM_CONTEXT = 6
_TWO64 = float(2**64)


@dataclass(frozen=True)
class FIMConfig:
    rate: float = 0.9
    spm_rate: float = 0.5
    seed: int = 0

    def __post_init__(self):
        for name in ("rate", "spm_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"fim {name} must be within [0, 1], got {value}")


@dataclass(frozen=True)
class FIMDecision:
    apply: bool
    spm: bool
    lo: int  # prefix = text[:lo], middle = text[lo:hi], suffix = text[hi:]
    hi: int


def decide(config: FIMConfig, identity: bytes, epoch: int, length: int) -> FIMDecision:
    """The FIM decision for one document of `length` characters; a pure function of its arguments."""
    digest = hashlib.blake2b(identity, digest_size=32, key=f"{config.seed}:{epoch}".encode()).digest()
    u = [int.from_bytes(digest[i : i + 8], "little") for i in range(0, 32, 8)]
    a, b = u[2] % (length + 1), u[3] % (length + 1)
    return FIMDecision(u[0] / _TWO64 < config.rate, u[1] / _TWO64 < config.spm_rate, min(a, b), max(a, b))


@dataclass
class Transformed:
    """Token sequences for a batch of documents, with what happened to each (PLAIN/PSM/SPM/TOO_LONG, or skipped)."""

    input_ids: list[list[int]]
    kinds: list[int]
    skipped: Counter


def tokenize_documents(
    texts: Sequence,
    identities: Sequence | None,
    tokenizer,
    *,
    seq_len: int,
    fim: FIMConfig | None,
    epoch: int = 0,
    candidates: Sequence[bool] | None = None,
) -> Transformed:
    """Tokenize a batch of documents into training samples, applying FIM where the paper's rule says so.

    Empty, whitespace-only and undecodable documents are skipped and counted. Every document is encoded once, in a
    batch through the Rust tokenizer; FIM re-encodes only the words cut by split points, so the transform costs
    little more than plain tokenization (bench/data_pipeline.py). `candidates` (one flag per document; None: all)
    limits FIM to some documents, e.g. the instruct stage's code rehearsal (data/sft.py); the others stay plain.
    """
    skipped: Counter = Counter()
    kept_text: list[str] = []
    kept_ident: list[bytes] = []
    kept_candidate: list[bool] = []
    for i, text in enumerate(texts):
        if isinstance(text, (bytes, bytearray)):
            try:
                text = bytes(text).decode("utf-8")
            except UnicodeDecodeError:
                skipped["undecodable"] += 1
                continue
        if not isinstance(text, str):
            skipped["not text"] += 1
            continue
        raw = None
        if identities is None or not text.isascii():  # ASCII has no lone surrogate: no need to encode a copy
            try:
                raw = text.encode("utf-8")
            except UnicodeEncodeError:  # lone surrogates, e.g. from surrogateescape decoding
                skipped["undecodable"] += 1
                continue
        if not text or text.isspace():  # what `not text.strip()` says, without copying the document
            skipped["empty"] += 1
            continue
        kept_text.append(text)
        kept_ident.append(raw if identities is None else str(identities[i]).encode("utf-8"))
        kept_candidate.append(True if candidates is None else bool(candidates[i]))
    if skipped:
        logger.info("skipped documents: %s", dict(skipped))

    # BOS only where the tokenizer adds one itself (Llama 2/3 do; a byte-level BPE base such as SmolLM2 does not)
    lead = [tokenizer.bos_token_id] if adds_bos(tokenizer) else []
    eos = tokenizer.eos_token_id
    plain = encode_batch(tokenizer, kept_text)
    kinds = [PLAIN] * len(kept_text)
    samples = [[*lead, *ids, eos] for ids in plain]
    if fim is None or fim.rate == 0:
        return Transformed(samples, kinds, skipped)
    ids = infill_ids(tokenizer)
    if seq_len < MIN_FIM_CONTEXT:
        raise ValueError(f"seq_len {seq_len} is too short for a FIM sample (needs at least {MIN_FIM_CONTEXT})")
    # The FIM sample has 3 more tokens than the plain one, plus what splitting costs; only documents that fit
    # uncut are candidates. Their pieces are re-encoded only at the split points (tokenizer.encode_slices).
    chosen, slices = [], []
    for j, text in enumerate(kept_text):
        if len(plain[j]) + 2 > seq_len or not kept_candidate[j]:
            continue
        d = decide(fim, kept_ident[j], epoch, len(text))
        if not d.apply:
            continue
        chosen.append((j, d.spm))
        if d.spm:  # suffix, prefix + middle
            slices += [(j, d.hi, len(text), False), (j, 0, d.hi, True)]
        else:  # prefix, suffix, middle
            slices += [(j, 0, d.lo, True), (j, d.hi, len(text), False), (j, d.lo, d.hi, False)]
    pieces = iter(encode_slices(tokenizer, kept_text, plain, slices))
    for j, spm in chosen:
        if spm:
            suffix, prefix_middle = next(pieces), next(pieces)
            sample = [*lead, ids.prefix, ids.suffix, *suffix, ids.middle, *prefix_middle, ids.eot]
        else:
            prefix, suffix, middle = next(pieces), next(pieces), next(pieces)
            sample = [*lead, ids.prefix, *prefix, ids.suffix, *suffix, ids.middle, *middle, ids.eot]
        if len(sample) <= seq_len:
            samples[j], kinds[j] = sample, (SPM if spm else PSM)
        else:
            kinds[j] = TOO_LONG
    return Transformed(samples, kinds, skipped)
