"""Encoding the way Meta's code does: SentencePiece-exact ids, `encode_infilling` and the PSM/SPM prompts.

Byte-level BPE bases (Llama 3-style, SmolLM2) with the FIM tokens of `tokenizer.bpe` use the same functions: their
`encode` and `encode_infilling` are one plain byte-level encoding (no implicit space to undo), and the layouts are
the same with the BPE sentinels (and BOS only where the tokenizer adds one).

About `<FILL_ME>`: that is a feature of transformers' `CodeLlamaTokenizer` class, which our files deliberately do
not select (it inserts an extra 29871 before the suffix, docs/stack-notes.md). With our files `<FILL_ME>` is plain
text; build infilling prompts with `infilling_prompt()` or `codellama_hf.load(...).infill()`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from codellama_hf.tokenizer.pieces import BPE_SENTINELS, INFILLING_PIECES, SENTINELS


@dataclass(frozen=True)
class InfillIds:
    bos: int | None  # None: the tokenizer adds no BOS (a byte-level BPE base such as SmolLM2)
    eos: int
    prefix: int
    suffix: int
    middle: int
    eot: int


def _sentinels(tokenizer) -> tuple[str, ...] | None:
    """The sentinel names this tokenizer has: Meta's pieces (SentencePiece) or the BPE FIM tokens, or None."""
    for names in (SENTINELS, BPE_SENTINELS):
        if all(tokenizer.convert_tokens_to_ids(p) not in (None, tokenizer.unk_token_id) for p in names):
            return names
    return None


def supports_infilling(tokenizer) -> bool:
    return _sentinels(tokenizer) is not None


def infill_ids(tokenizer) -> InfillIds:
    """Ids of BOS/EOS and the four sentinels; a clear error for a tokenizer without infilling pieces."""
    from codellama_hf.tokenizer.bpe import BYTE_LEVEL, adds_bos, tokenizer_kind

    names = _sentinels(tokenizer)
    if names is None:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        if tokenizer_kind(tokenizer) == BYTE_LEVEL:
            raise ValueError(
                f"tokenizer {name!r} has no FIM tokens ({', '.join(BPE_SENTINELS)}): add them to this byte-level "
                "BPE tokenizer with `codellama-hf tokenizer --add-fim <base> --out ...` (and grow the model's "
                "embeddings: resize_token_embeddings: true) or disable FIM"
            )
        raise ValueError(
            f"tokenizer {name!r} has no infilling pieces ({', '.join(SENTINELS)}): it is a Python/34B-style "
            "vocabulary. Use a tokenizer built with `codellama-hf tokenizer` (without --no-infilling) or disable FIM."
        )
    ids = [tokenizer.convert_tokens_to_ids(p) for p in names]
    bos = tokenizer.bos_token_id if names == SENTINELS or adds_bos(tokenizer) else None
    return InfillIds(bos, tokenizer.eos_token_id, *ids)


class _Backends:
    """Two copies of the Rust tokenizer: Meta's `encode` (implicit leading space) and `encode_infilling` (none)."""

    def __init__(self, tokenizer):
        from codellama_hf.tokenizer.bpe import BYTE_LEVEL, tokenizer_kind

        spec = json.loads(tokenizer.backend_tokenizer.to_str())
        if tokenizer_kind(tokenizer) == BYTE_LEVEL:
            self._byte_level(spec)
            return
        normalizer = spec.get("normalizer") or {}
        steps = [step.get("type") for step in normalizer.get("normalizers", [normalizer])]
        if steps != ["Prepend", "Replace"] or spec.get("pre_tokenizer") is not None:
            name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
            raise ValueError(
                f"tokenizer {name!r} is not SentencePiece-exact (normalizer {steps}, pre_tokenizer "
                f"{(spec.get('pre_tokenizer') or {}).get('type')}); transformers may have converted it. Rebuild it "
                "with `codellama-hf tokenizer` so that tokenizer.json is loaded as written."
            )
        # Special pieces (<s>, </s>, the sentinels) stay special for users of AutoTokenizer, which matches their text
        # like every HF Llama tokenizer does. Our own encoders never match them in text, exactly like SentencePiece's
        # CONTROL pieces: a document containing "</s>" or "▁<PRE>" cannot smuggle a control id into training data.
        self.special_ids = {t["id"] for t in spec["added_tokens"]}
        unreachable = {t["content"] for t in spec["added_tokens"]} | set(INFILLING_PIECES)
        vocab = spec["model"]["vocab"]
        # Characters of the normalized text each token covers; a byte-fallback token counts 1 for a UTF-8 lead byte.
        self.char_lengths = np.zeros(len(vocab), dtype=np.int64)
        for piece, index in vocab.items():
            byte = re.fullmatch(r"<0x([0-9A-F]{2})>", piece)
            self.char_lengths[index] = (int(byte[1], 16) & 0xC0 != 0x80) if byte else len(piece)
        reachable = [p for p in vocab if p not in unreachable and not re.fullmatch(r"<0x[0-9A-F]{2}>", p)]
        self.max_piece_chars = max(len(p) for p in reachable)
        # SentencePiece with split_by_whitespace: no piece holds "▁" after another character, so a token boundary
        # always precedes a run of spaces and text between such runs ("units") is encoded independently.
        self.unit_local = not any(re.search(r"[^▁]▁", p) for p in reachable)
        spec["added_tokens"] = []
        spec["post_processor"] = None
        spec["truncation"] = spec["padding"] = None
        self.spaced = Tokenizer.from_str(json.dumps(spec))
        spec["normalizer"] = {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
        spec["decoder"] = {"type": "Sequence", "decoders": spec["decoder"]["decoders"][:-1]}  # no Strip
        self.unspaced = Tokenizer.from_str(json.dumps(spec))

    def _byte_level(self, spec: dict) -> None:
        """Byte-level BPE: one encoder for `encode` and `encode_infilling` (no implicit space); specials as bytes."""
        self.special_ids = {t["id"] for t in spec["added_tokens"] if t.get("special")}
        vocab = spec["model"]["vocab"]
        specials = {t["content"] for t in spec["added_tokens"]}
        # Characters per piece are at most its bytes, which the byte-level alphabet shows one per character.
        self.max_piece_chars = max(len(p) for p in vocab if p not in specials)
        self.char_lengths = np.zeros(len(vocab), dtype=np.int64)
        self.unit_local = False  # slices are encoded whole (encode_slices' direct path)
        spec["added_tokens"] = []
        spec["post_processor"] = None
        spec["truncation"] = spec["padding"] = None
        self.spaced = self.unspaced = Tokenizer.from_str(json.dumps(spec))


def _backends(tokenizer) -> _Backends:
    cached = getattr(tokenizer, "_codellama_backends", None)
    if cached is None:
        cached = _Backends(tokenizer)
        tokenizer._codellama_backends = cached
    return cached


def prepare_encoders(tokenizer) -> None:
    """Build the cached Rust encoders now (about a second for a 32k vocabulary) rather than at the first encode.

    Call it before DataLoader workers start: forked workers inherit the built encoders instead of each rebuilding
    them, which would add the build to every worker's start-up (bench/data_pipeline.py reports start-up).
    """
    _backends(tokenizer)


def encode_batch(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Meta's `encode(s, bos=False, eos=False)`: SentencePiece with its implicit leading space."""
    return [e.ids for e in _backends(tokenizer).spaced.encode_batch_fast(list(texts), add_special_tokens=False)]


def encode_infilling_batch(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Meta's `encode_infilling(s)` (= `sp.encode("☺" + s)[2:]`): no implicit leading space."""
    return [e.ids for e in _backends(tokenizer).unspaced.encode_batch_fast(list(texts), add_special_tokens=False)]


def max_piece_chars(tokenizer) -> int:
    """Most characters one token can cover: a document longer than seq_len times this cannot fit in seq_len."""
    return _backends(tokenizer).max_piece_chars


def _prev_unit_start(text: str, p: int) -> int:
    """Largest unit start <= p, in coordinates of the normalized text "▁" + text (position p is text[p - 1])."""
    if p == 0 or p > len(text):
        return p
    j = text.rfind(" ", 0, p)
    if j == -1:
        return 0
    while j > 0 and text[j - 1] == " ":
        j -= 1
    return 0 if j == 0 else j + 1


def _next_unit_start(text: str, p: int) -> int:
    """Smallest unit start > p (or the end), in normalized coordinates."""
    j = text.find(" ", p)
    while j != -1 and (j == 0 or text[j - 1] == " "):
        j = text.find(" ", j + 1)
    return len(text) + 1 if j == -1 else j + 1


def _normalized_slice(text: str, x: int, y: int) -> tuple[str, bool]:
    """The text behind normalized positions [x, y), and whether it includes the leading "▁" (spaced)."""
    if x == y:
        return "", False
    return (text[: y - 1], True) if x == 0 else (text[x - 1 : y - 1], False)


def encode_slices(
    tokenizer, texts: Sequence[str], plain: Sequence[Sequence[int]], slices: Sequence[tuple[int, int, int, bool]]
) -> list[list[int]]:
    """Encode many slices of documents whose `encode` ids (`plain`) are known, re-encoding only their edges.

    Each slice is (document index, start, end, spaced): `spaced` slices (start must be 0) are Meta's `encode` of
    text[:end], the others `encode_infilling` of text[start:end]. Because units (runs of text between space runs)
    are tokenized independently, only the partial units at a slice's two ends need encoding; the whole units in
    between are copied from the plain ids. The result equals direct encoding (tests check it); tokenizers without
    that property, or documents whose ids don't line up with their text, fall back to direct encoding.
    """
    backends = _backends(tokenizer)
    cums = {}
    requests: list[tuple[str, bool]] = []  # edge strings to encode, with spaced flag
    plans = []
    for doc, start, end, spaced in slices:
        if spaced and start != 0:
            raise ValueError("a spaced slice must start at 0 (Meta's encode adds one leading space)")
        text = texts[doc]
        if doc not in cums:
            cum = np.concatenate([[0], np.cumsum(backends.char_lengths[np.asarray(plain[doc], dtype=np.int64)])])
            cums[doc] = cum if backends.unit_local and cum[-1] == len(text) + 1 else None
        cum = cums[doc]
        s, e = (0 if spaced else start + 1), end + 1
        if cum is None or s == e:
            plans.append((len(requests), None, None, None))
            requests.append((text[start:end], spaced))
            continue
        a = min(s if s == 0 or s == _prev_unit_start(text, s) else _next_unit_start(text, s), e)
        b = max(_prev_unit_start(text, e), a)
        # Last matching index: continuation bytes of a split character cover 0 characters and belong before it.
        ka, kb = np.searchsorted(cum, [a, b], side="right") - 1
        if cum[ka] != a or cum[kb] != b:
            plans.append((len(requests), None, None, None))
            requests.append((text[start:end], spaced))
            continue
        head = len(requests)
        requests.append(_normalized_slice(text, s, a))
        requests.append(_normalized_slice(text, b, e))
        plans.append((head, doc, int(ka), int(kb)))
    spaced_idx = [i for i, (_, sp) in enumerate(requests) if sp]
    unspaced_idx = [i for i, (_, sp) in enumerate(requests) if not sp]
    encoded: list[list[int]] = [[] for _ in requests]
    for idx, ids in zip(spaced_idx, encode_batch(tokenizer, [requests[i][0] for i in spaced_idx]), strict=False):
        encoded[idx] = ids
    for idx, ids in zip(
        unspaced_idx, encode_infilling_batch(tokenizer, [requests[i][0] for i in unspaced_idx]), strict=False
    ):
        encoded[idx] = ids
    out = []
    for head, doc, ka, kb in plans:
        if doc is None:
            out.append(encoded[head])
        else:
            out.append([*encoded[head], *plain[doc][ka:kb], *encoded[head + 1]])
    return out


def encode(tokenizer, text: str) -> list[int]:
    return encode_batch(tokenizer, [text])[0]


def encode_infilling(tokenizer, text: str) -> list[int]:
    return encode_infilling_batch(tokenizer, [text])[0]


def decode_infilling(tokenizer, ids: Iterable[int]) -> str:
    """Meta's `decode_infilling`: decode without removing a leading space; special pieces are dropped."""
    backends = _backends(tokenizer)
    return backends.unspaced.decode([i for i in ids if i not in backends.special_ids], skip_special_tokens=False)


def infilling_prompt(tokenizer, prefix: str, suffix: str, *, suffix_first: bool = False) -> list[int]:
    """Meta's `infilling_prompt_tokens`.

    PSM `<s> ▁<PRE> pre ▁<SUF>suf ▁<MID>` or SPM `<s> ▁<PRE> ▁<SUF>suf ▁<MID> pre`; on a byte-level BPE base
    `[BOS] <PRE> pre <SUF> suf <MID>` / `[BOS] <PRE> <SUF> suf <MID> pre` (tokenizer.bpe).
    """
    ids = infill_ids(tokenizer)
    suf = encode_infilling(tokenizer, suffix)
    pre = encode(tokenizer, prefix)
    bos = [] if ids.bos is None else [ids.bos]
    if suffix_first:
        return [*bos, ids.prefix, ids.suffix, *suf, ids.middle, *pre]
    return [*bos, ids.prefix, *pre, ids.suffix, *suf, ids.middle]
