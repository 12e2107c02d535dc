"""Fill-in-the-middle on byte-level BPE bases (Llama 3-style tiktoken BPE, SmolLM2): the sentinels as added tokens.

Code Llama's recipe is tied to Llama 2's SentencePiece vocabulary, where Meta appended 16 pieces (ids 32000-32015).
A byte-level BPE base has no such pieces, so `add_fim_tokens` appends the four sentinels as special added tokens,
in this order and at these ids (V = the base tokenizer's size, `len(tokenizer)`):

    <PRE> = V    <SUF> = V + 1    <MID> = V + 2    <EOT> = V + 3      (SmolLM2: 49152-49155; Llama 3: 128256-128259)

and the model then grows V + 4 embedding rows (`resize_token_embeddings: true`, new rows at the mean embedding).

Encoding rules (codellama_hf.tokenizer.encoding dispatches on the tokenizer's kind):

    PSM  [BOS] <PRE> enc(prefix) <SUF> enc(suffix) <MID> enc(middle) <EOT>
    SPM  [BOS] <PRE> <SUF> enc(suffix) <MID> enc(prefix + middle) <EOT>

`enc` is the plain byte-level encoding: byte-level BPE adds no implicit leading space, so the SentencePiece trick
(Meta's `encode_infilling`, which encodes "☺" + text and drops two ids) is neither needed nor applied; every byte
of prefix, middle and suffix is kept as written. BOS appears only when the base tokenizer adds one itself (Llama 3's
<|begin_of_text|>; SmolLM2 adds none). Text that spells a special token ("<|im_start|>", "<PRE>") is encoded as
ordinary bytes, so documents cannot smuggle control ids into training data.
"""

from __future__ import annotations

import json

from tokenizers import AddedToken

from codellama_hf.tokenizer.pieces import BPE_SENTINELS

SENTENCEPIECE, BYTE_LEVEL = "sentencepiece", "byte-level BPE"


def _spec(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ValueError(
            f"tokenizer {name!r} has no fast (tokenizers) backend: FIM needs a tokenizer.json "
            "(SentencePiece BPE like Llama 2's, or byte-level BPE like Llama 3's and SmolLM2's)"
        )
    return json.loads(backend.to_str())


def _is_byte_level(spec: dict) -> bool:
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    return (spec.get("model") or {}).get("type") == "BPE" and any(s.get("type") == "ByteLevel" for s in steps)


def tokenizer_kind(tokenizer) -> str | None:
    """SENTENCEPIECE (Llama 2-style: "▁" normalizer, no pre-tokenizer), BYTE_LEVEL, or None (neither)."""
    spec = _spec(tokenizer)
    if _is_byte_level(spec):
        return BYTE_LEVEL
    normalizer = spec.get("normalizer") or {}
    steps = [step.get("type") for step in normalizer.get("normalizers", [normalizer])]
    if (spec.get("model") or {}).get("type") == "BPE" and "Replace" in steps and spec.get("pre_tokenizer") is None:
        return SENTENCEPIECE
    return None


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts BOS in front of encoded text by itself (Llama 2/3 do, SmolLM2 does not)."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("x").input_ids[:1] == [bos]


def add_fim_tokens(tokenizer) -> list[int]:
    """Append <PRE> <SUF> <MID> <EOT> to a byte-level BPE tokenizer as special tokens; returns their ids.

    A clear error for tokenizers that cannot take them: SentencePiece ones (they get Meta's 16 pieces with
    `codellama-hf tokenizer --llama2`), other kinds, and vocabularies that already use one of the names.
    """
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    kind = tokenizer_kind(tokenizer)
    if kind == SENTENCEPIECE:
        raise ValueError(
            f"tokenizer {name!r} is SentencePiece BPE (Llama 2-style): give it Meta's 16 infilling pieces at Meta's "
            "ids with `codellama-hf tokenizer --llama2 <tokenizer.model> --out ...` instead"
        )
    if kind is None:
        spec = _spec(tokenizer)
        raise ValueError(
            f"tokenizer {name!r} cannot take the FIM tokens: it is neither byte-level BPE (Llama 3, SmolLM2) nor "
            f"SentencePiece BPE (Llama 2) (model {(spec.get('model') or {}).get('type')}, pre-tokenizer "
            f"{(spec.get('pre_tokenizer') or {}).get('type')}); FIM is supported for Llama-architecture bases with "
            "one of those tokenizers"
        )
    vocab = tokenizer.get_vocab()
    clash = [piece for piece in BPE_SENTINELS if piece in vocab]
    if clash:
        raise ValueError(
            f"tokenizer {name!r} already has {clash} (ids {[vocab[p] for p in clash]}): it already has FIM tokens, "
            "or uses those names for something else; use it as it is"
        )
    first = len(tokenizer)
    tokenizer.add_tokens([AddedToken(p, special=True, normalized=False) for p in BPE_SENTINELS], special_tokens=True)
    ids = [tokenizer.convert_tokens_to_ids(p) for p in BPE_SENTINELS]
    if ids != list(range(first, first + len(BPE_SENTINELS))):
        raise RuntimeError(f"FIM tokens got ids {ids}, expected {first}-{first + 3} (appended after the vocabulary)")
    if hasattr(tokenizer, "_codellama_backends"):
        del tokenizer._codellama_backends  # the cached encoders predate the new tokens
    return ids


def add_fim_tokens_to_folder(base, out, *, overwrite: bool = False):
    """`codellama-hf tokenizer --add-fim BASE --out DIR`: the base's tokenizer plus the FIM tokens, atomically."""
    from pathlib import Path

    from transformers import AutoTokenizer

    from codellama_hf.io import atomic_dir

    try:
        tokenizer = AutoTokenizer.from_pretrained(base)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"--add-fim {base}: cannot load a tokenizer there ({err})") from None
    ids = add_fim_tokens(tokenizer)
    with atomic_dir(Path(out), overwrite=overwrite) as staged:
        tokenizer.save_pretrained(staged)
    return Path(out), ids
