"""Code Llama's tokenizer: Llama 2's SentencePiece model plus the infilling pieces, and Meta's infilling encodings.

Code Llama 7B/13B extend Llama 2's 32,000 pieces with 16 more (ids 32000-32015); the four that matter are ▁<PRE>=32007,
▁<SUF>=32008, ▁<MID>=32009 and ▁<EOT>=32010 (Meta's codellama repository, llama/tokenizer.py). We append the same 16
pieces to any SentencePiece BPE model, so the tiny tokenizer used in tests carries them at the same offsets.

Modules: `pieces` (the added pieces), `build` (SentencePiece and HF files, the tiny preset), `encoding` (Meta's
encodings and prompts), `bpe` (the FIM tokens on byte-level BPE bases such as Llama 3 and SmolLM2); the command is
codellama_hf.cli.tokenizer.
"""

from codellama_hf.tokenizer.bpe import BYTE_LEVEL, SENTENCEPIECE, add_fim_tokens, adds_bos, tokenizer_kind
from codellama_hf.tokenizer.build import (
    STALE_TOKENIZER_FILES,
    TINY_VOCAB,
    TOKENIZER_FILES,
    add_infilling_pieces,
    build_codellama_tokenizer,
    build_tiny_tokenizer,
    has_infilling_pieces,
    hf_tokenizer_from_sp,
    load_sp_model,
    save_tokenizer,
    sentencepiece_file,
    tiny_training_text,
    tokenizer_config,
    train_tiny_sentencepiece,
    write_tokenizer_files,
)
from codellama_hf.tokenizer.encoding import (
    InfillIds,
    decode_infilling,
    encode,
    encode_batch,
    encode_infilling,
    encode_infilling_batch,
    encode_slices,
    infill_ids,
    infilling_prompt,
    max_piece_chars,
    prepare_encoders,
    supports_infilling,
)
from codellama_hf.tokenizer.pieces import (
    BOS,
    BPE_SENTINELS,
    EOS,
    EOT,
    INFILLING_PIECES,
    MIDDLE,
    PREFIX,
    SENTINELS,
    SUFFIX,
    UNK,
)

__all__ = [
    "BOS",
    "BPE_SENTINELS",
    "BYTE_LEVEL",
    "SENTENCEPIECE",
    "add_fim_tokens",
    "adds_bos",
    "tokenizer_kind",
    "EOS",
    "EOT",
    "INFILLING_PIECES",
    "InfillIds",
    "MIDDLE",
    "PREFIX",
    "SENTINELS",
    "STALE_TOKENIZER_FILES",
    "SUFFIX",
    "TINY_VOCAB",
    "TOKENIZER_FILES",
    "UNK",
    "add_infilling_pieces",
    "build_codellama_tokenizer",
    "build_tiny_tokenizer",
    "decode_infilling",
    "encode",
    "encode_batch",
    "encode_infilling",
    "encode_infilling_batch",
    "encode_slices",
    "has_infilling_pieces",
    "hf_tokenizer_from_sp",
    "infill_ids",
    "infilling_prompt",
    "load_sp_model",
    "max_piece_chars",
    "prepare_encoders",
    "save_tokenizer",
    "sentencepiece_file",
    "supports_infilling",
    "tiny_training_text",
    "tokenizer_config",
    "train_tiny_sentencepiece",
    "write_tokenizer_files",
]
