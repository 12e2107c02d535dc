"""Building Code Llama's tokenizer files: Llama 2's SentencePiece model plus the infilling pieces, as HF files too.

The pieces are typed so that ordinary text never produces them: the four sentinels are CONTROL pieces (like <s>)
and the twelve others UNUSED. Ordinary code therefore tokenizes exactly as with Llama 2, and a document that happens
to contain the text " <PRE>" cannot smuggle a sentinel into training data.

The HF files are written by us, not by transformers' converter: transformers 5 rewrites a Llama tokenizer into a
Metaspace pre-tokenizer that disagrees with SentencePiece (docs/stack-notes.md). We derive the BPE merges from the
SentencePiece scores exactly as Llama 2's official tokenizer.json was derived (same merges, same order) and save it
with `tokenizer_class: PreTrainedTokenizerFast`, which transformers loads without rewriting.
"""

from __future__ import annotations

import io
import os
import sysconfig
from pathlib import Path

from sentencepiece import sentencepiece_model_pb2 as sp_pb2
from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
from tokenizers.models import BPE

from codellama_hf.io import atomic_dir, atomic_file, write_json, write_text
from codellama_hf.tokenizer.pieces import BOS, EOS, INFILLING_PIECES, SENTINELS, UNK

_NORMAL, _CONTROL, _UNUSED = (
    sp_pb2.ModelProto.SentencePiece.NORMAL,
    sp_pb2.ModelProto.SentencePiece.CONTROL,
    sp_pb2.ModelProto.SentencePiece.UNUSED,
)


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
