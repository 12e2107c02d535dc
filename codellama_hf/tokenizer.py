"""Code Llama's tokenizer: Llama 2's SentencePiece model plus the infilling pieces, and Meta's infilling encodings.

Code Llama 7B/13B extend Llama 2's 32,000 pieces with 16 more (ids 32000-32015); the four that matter are ▁<PRE>=32007,
▁<SUF>=32008, ▁<MID>=32009 and ▁<EOT>=32010 (Meta's codellama repository, llama/tokenizer.py). We append the same 16
pieces to any SentencePiece BPE model, so the tiny tokenizer used in tests carries them at the same offsets.

Pieces are typed so that ordinary text never produces them: the four sentinels are CONTROL pieces (like <s>)
and the twelve others UNUSED. Ordinary code therefore tokenizes exactly as with Llama 2, and a document that
happens to contain the text " <PRE>" cannot smuggle a sentinel into training data.

The HF files are written by us, not by transformers' converter: transformers 5 rewrites a Llama tokenizer into a
Metaspace pre-tokenizer that disagrees with SentencePiece (docs/stack-notes.md). We derive the BPE merges from the
SentencePiece scores exactly as Llama 2's official tokenizer.json was derived (same merges, same order) and save
it with `tokenizer_class: PreTrainedTokenizerFast`, which transformers loads without rewriting.

About `<FILL_ME>`: that is a feature of transformers' `CodeLlamaTokenizer` class, which our files deliberately do
not select (it inserts an extra 29871 before the suffix, docs/stack-notes.md). With our files `<FILL_ME>` is plain
text; build infilling prompts with `infilling_prompt()` or `codellama_hf.load(...).infill()`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import sysconfig
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sentencepiece import sentencepiece_model_pb2 as sp_pb2
from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
from tokenizers.models import BPE

from codellama_hf.io import atomic_dir, atomic_file, write_json, write_text

PREFIX, SUFFIX, MIDDLE, EOT = "▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"
SENTINELS = (PREFIX, SUFFIX, MIDDLE, EOT)
# The 16 pieces Meta appended to Llama 2's vocabulary, in id order (32000-32015).
INFILLING_PIECES = (
    "▁<SU",
    "▁<SUF",
    "▁<PRE",
    "▁<M",
    "▁<MID",
    "▁<E",
    "▁<EOT",
    PREFIX,
    SUFFIX,
    MIDDLE,
    EOT,
    *("▁" + "<EOT>" * n for n in range(2, 7)),
)
BOS, EOS, UNK = "<s>", "</s>", "<unk>"

_NORMAL, _CONTROL, _UNUSED = (
    sp_pb2.ModelProto.SentencePiece.NORMAL,
    sp_pb2.ModelProto.SentencePiece.CONTROL,
    sp_pb2.ModelProto.SentencePiece.UNUSED,
)


# ---------------------------------------------------------------------------------------------------------------
# Building the files
# ---------------------------------------------------------------------------------------------------------------


def load_sp_model(path: str | os.PathLike) -> sp_pb2.ModelProto:
    """Parse a SentencePiece model file, with an error that names the file when it is not one."""
    proto = sp_pb2.ModelProto()
    try:
        proto.ParseFromString(Path(path).read_bytes())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such SentencePiece model file") from None
    except Exception as err:  # protobuf raises DecodeError
        raise ValueError(f"{path}: not a SentencePiece model ({err})") from None
    if not proto.pieces:
        raise ValueError(f"{path}: not a SentencePiece model (no pieces)")
    if proto.trainer_spec.model_type != sp_pb2.TrainerSpec.BPE:
        raise ValueError(f"{path}: only BPE SentencePiece models are supported (Llama 2's is BPE)")
    return proto


def add_infilling_pieces(proto: sp_pb2.ModelProto) -> sp_pb2.ModelProto:
    """Return a copy of `proto` with Code Llama's 16 infilling pieces appended (sentinels at offsets 7-10)."""
    existing = {p.piece for p in proto.pieces}
    clash = [piece for piece in INFILLING_PIECES if piece in existing]
    if clash:
        raise ValueError(f"the SentencePiece model already has infilling pieces {clash}: it is already extended")
    extended = sp_pb2.ModelProto()
    extended.CopyFrom(proto)
    for piece in INFILLING_PIECES:
        extended.pieces.add(piece=piece, score=0.0, type=_CONTROL if piece in SENTINELS else _UNUSED)
    return extended


def _bpe_merges(proto: sp_pb2.ModelProto) -> list[tuple[str, str]]:
    """BPE merges equivalent to SentencePiece's score-ordered merging (reproduces Llama 2's tokenizer.json)."""
    normal = {p.piece: i for i, p in enumerate(proto.pieces) if p.type == _NORMAL}
    ranked = []
    for merged_id, piece in enumerate(proto.pieces):
        if piece.type != _NORMAL:
            continue
        text = piece.piece
        for cut in range(1, len(text)):
            left, right = text[:cut], text[cut:]
            if left in normal and right in normal:
                ranked.append((-piece.score, merged_id, normal[left], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def hf_tokenizer_from_sp(proto: sp_pb2.ModelProto) -> Tokenizer:
    """A `tokenizers` BPE tokenizer that encodes and decodes exactly like the SentencePiece model."""
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    unk = proto.pieces[proto.trainer_spec.unk_id].piece
    tok = Tokenizer(BPE(vocab=vocab, merges=_bpe_merges(proto), unk_token=unk, fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    bos = proto.pieces[proto.trainer_spec.bos_id].piece
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, proto.trainer_spec.bos_id)]
    )
    specials = [p.piece for p in proto.pieces if p.type in (sp_pb2.ModelProto.SentencePiece.UNKNOWN, _CONTROL)]
    tok.add_special_tokens([AddedToken(s, normalized=False, special=True) for s in specials])
    return tok


# Keys transformers 4.x (>= 4.40) and 5.x both read the same way. Not written: 5.x's own class name
# ("TokenizersBackend", unknown to 4.x), the list-typed `extra_special_tokens` (4.x expects a mapping there) and
# run-time keys such as `is_local` / `local_files_only` that 5.x's save_pretrained leaks into the file.
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
STALE_TOKENIZER_FILES = ("chat_template.jinja", "chat_template.json", "added_tokens.json")


def tokenizer_config(proto: sp_pb2.ModelProto, *, chat_template: str | None = None) -> dict:
    """tokenizer_config.json for `proto`: loaded as PreTrainedTokenizerFast by transformers 4.x and 5.x alike.

    The chat template lives in this file (not in chat_template.jinja, which transformers reads only since 4.43).
    """
    infilling = has_infilling_pieces(proto)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": UNK,
        "pad_token": None,
        "additional_special_tokens": list(SENTINELS) if infilling else [],
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1_000_000_000_000_000_019_884_624_838_656,
        "padding_side": "left",
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    return config


def has_infilling_pieces(proto: sp_pb2.ModelProto) -> bool:
    pieces = {p.piece for p in proto.pieces}
    return all(piece in pieces for piece in SENTINELS)


def write_tokenizer_files(proto: sp_pb2.ModelProto, folder: str | os.PathLike, *, chat_template: str | None = None):
    """Write the four tokenizer files of `proto` into an existing folder, each by rename (never half-written).

    Stale tokenizer files another writer left (chat_template.jinja, added_tokens.json) are removed, so what the
    folder says is exactly `proto` plus `chat_template`.
    """
    folder = Path(folder)
    config = tokenizer_config(proto, chat_template=chat_template)
    specials = {key: config[key] for key in ("bos_token", "eos_token", "unk_token", "additional_special_tokens")}
    with atomic_file(folder / "tokenizer.model") as tmp:
        tmp.write_bytes(proto.SerializeToString())
    write_text(folder / "tokenizer.json", hf_tokenizer_from_sp(proto).to_str(pretty=True))
    write_json(folder / "tokenizer_config.json", config)
    write_json(folder / "special_tokens_map.json", specials)
    for name in STALE_TOKENIZER_FILES:
        (folder / name).unlink(missing_ok=True)


def save_tokenizer(
    proto: sp_pb2.ModelProto,
    out_dir: str | os.PathLike,
    *,
    chat_template: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write tokenizer.model + tokenizer.json + tokenizer_config.json + special_tokens_map.json, atomically.

    `AutoTokenizer.from_pretrained(out_dir)` (transformers 4.x or 5.x) and
    `sentencepiece.SentencePieceProcessor(out_dir/tokenizer.model)` then agree token for token.
    """
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        write_tokenizer_files(proto, tmp, chat_template=chat_template)
    return out_dir


def sentencepiece_file(tokenizer) -> Path | None:
    """The tokenizer.model a loaded tokenizer was built from (transformers records it as `vocab_file`), if any."""
    candidates = [
        getattr(tokenizer, "vocab_file", None),
        (getattr(tokenizer, "init_kwargs", None) or {}).get("vocab_file"),
    ]
    name = getattr(tokenizer, "name_or_path", None)
    if name:
        candidates.append(Path(name) / "tokenizer.model")
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def build_codellama_tokenizer(
    llama2_model: str | os.PathLike, out_dir: str | os.PathLike, *, infilling: bool = True, overwrite: bool = False
) -> Path:
    """Code Llama's tokenizer from Llama 2's tokenizer.model (32016 pieces, or 32000 with `infilling=False`)."""
    proto = load_sp_model(llama2_model)
    return save_tokenizer(add_infilling_pieces(proto) if infilling else proto, out_dir, overwrite=overwrite)


TINY_VOCAB = 4000  # + 16 infilling pieces = 4016, mirroring 32000 + 16


def tiny_training_text(max_bytes: int = 3_000_000) -> list[str]:
    """Lines of the Python standard library's sources, in a fixed order: the tiny tokenizer's training text."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    lines, total = [], 0
    for path in sorted(stdlib.glob("*.py")):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.strip():
                lines.append(line)
                total += len(line) + 1
        if total >= max_bytes:
            break
    return lines


def train_tiny_sentencepiece(vocab_size: int = TINY_VOCAB) -> sp_pb2.ModelProto:
    """Train a small Llama-style SentencePiece BPE model on local code, reproducibly (single thread, no shuffle)."""
    import sentencepiece as spm

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(tiny_training_text()),
        model_writer=buffer,
        model_type="bpe",
        vocab_size=vocab_size,
        character_coverage=0.9995,
        byte_fallback=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        max_sentencepiece_length=16,
        num_threads=1,
        shuffle_input_sentence=False,
        input_sentence_size=0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    proto = sp_pb2.ModelProto()
    proto.ParseFromString(buffer.getvalue())
    return proto


def build_tiny_tokenizer(out_dir: str | os.PathLike, *, infilling: bool = True, overwrite: bool = False) -> Path:
    """The tiny preset's tokenizer: a 4000-piece model trained here, extended like Code Llama's."""
    proto = train_tiny_sentencepiece()
    return save_tokenizer(add_infilling_pieces(proto) if infilling else proto, out_dir, overwrite=overwrite)


# ---------------------------------------------------------------------------------------------------------------
# Encoding the way Meta's code does
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InfillIds:
    bos: int
    eos: int
    prefix: int
    suffix: int
    middle: int
    eot: int


def supports_infilling(tokenizer) -> bool:
    return all(tokenizer.convert_tokens_to_ids(piece) not in (None, tokenizer.unk_token_id) for piece in SENTINELS)


def infill_ids(tokenizer) -> InfillIds:
    """Ids of BOS/EOS and the four sentinels; a clear error for a tokenizer without infilling pieces."""
    if not supports_infilling(tokenizer):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ValueError(
            f"tokenizer {name!r} has no infilling pieces ({', '.join(SENTINELS)}): it is a Python/34B-style "
            "vocabulary. Use a tokenizer built with `codellama-hf tokenizer` (without --no-infilling) or disable FIM."
        )
    ids = [tokenizer.convert_tokens_to_ids(p) for p in SENTINELS]
    return InfillIds(tokenizer.bos_token_id, tokenizer.eos_token_id, *ids)


class _Backends:
    """Two copies of the Rust tokenizer: Meta's `encode` (implicit leading space) and `encode_infilling` (none)."""

    def __init__(self, tokenizer):
        spec = json.loads(tokenizer.backend_tokenizer.to_str())
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


def _backends(tokenizer) -> _Backends:
    cached = getattr(tokenizer, "_codellama_backends", None)
    if cached is None:
        cached = _Backends(tokenizer)
        tokenizer._codellama_backends = cached
    return cached


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

    PSM `<s> ▁<PRE> pre ▁<SUF>suf ▁<MID>` or SPM `<s> ▁<PRE> ▁<SUF>suf ▁<MID> pre`.
    """
    ids = infill_ids(tokenizer)
    suf = encode_infilling(tokenizer, suffix)
    pre = encode(tokenizer, prefix)
    if suffix_first:
        return [ids.bos, ids.prefix, ids.suffix, *suf, ids.middle, *pre]
    return [ids.bos, ids.prefix, *pre, ids.suffix, *suf, ids.middle]


# ---------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "tokenizer",
        help="build Code Llama's tokenizer (SentencePiece + HF files) from Llama 2's tokenizer.model",
        description="Build Code Llama's tokenizer from Llama 2's tokenizer.model, or the tiny preset's tokenizer.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--llama2", type=Path, help="Llama 2 tokenizer.model")
    source.add_argument("--tiny", action="store_true", help="train the tiny preset's tokenizer on local code")
    parser.add_argument("--out", type=Path, required=True, help="output folder (must not exist)")
    parser.add_argument("--no-infilling", action="store_true", help="keep the base vocabulary (Python/34B variants)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    infilling = not args.no_infilling
    if args.tiny:
        out = build_tiny_tokenizer(args.out, infilling=infilling, overwrite=args.overwrite)
    else:
        out = build_codellama_tokenizer(args.llama2, args.out, infilling=infilling, overwrite=args.overwrite)
    proto = load_sp_model(out / "tokenizer.model")
    print(f"wrote {out}: {len(proto.pieces)} pieces, infilling {'on' if infilling else 'off'}")
    return 0
