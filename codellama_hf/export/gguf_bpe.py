"""The GGUF tokenizer of a byte-level BPE base (SmolLM2, Llama 3-style) with the FIM tokens, as llama.cpp reads it.

A SentencePiece base (Llama 2, Code Llama) is written from tokenizer.model (export.gguf); a byte-level BPE base has
no such file, so its vocabulary comes from tokenizer.json, laid out as llama.cpp's own `convert_hf_to_gguf.py`
does for GPT-2-style vocabularies (`get_vocab_base`):

- `tokenizer.ggml.model` = "gpt2"; the token list in id order, padded with `[PAD<i>]` (UNUSED) up to the embedding
  rows; added special tokens are CONTROL, other added tokens USER_DEFINED, the rest NORMAL.
- `tokenizer.ggml.merges`, BOS/EOS/UNK/PAD ids from the tokenizer files (gguf.SpecialVocab).
- `tokenizer.ggml.pre`: the name of llama.cpp's pre-tokenizer (its regex), identified as llama.cpp identifies it:
  the sha256 of the ids the tokenizer gives a fixed check text (llama.cpp PR #6920, `get_vocab_base_pre`).
- `tokenizer.ggml.add_bos_token`: whether the tokenizer puts BOS in front by itself (Llama 3 does, SmolLM2 not).
- The FIM ids `tokenizer.ggml.fim_pre_token_id` = <PRE>, `fim_suf` = <SUF>, `fim_mid` = <MID> and
  `tokenizer.ggml.eot_token_id` = <EOT> (codellama_hf.tokenizer.bpe: V, V+1, V+2, V+3; SmolLM2 49152-49155), so
  llama.cpp's /infill builds `<PRE> prefix <SUF> suffix <MID>` with the toolkit's ids and stops at <EOT>.
"""

from __future__ import annotations

from hashlib import sha256
from pathlib import Path

# llama.cpp's check text for BPE pre-tokenizers (convert_hf_to_gguf_update.py, PR #6920) and the names it gives
# the hashes of bases this toolkit supports; a base not listed gets a clear error instead of a silent default.
_CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ "
    "(multiple emojis concatenated) ✅ 🦙🦙 3 33 333 "
    "3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= "
    "нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not "
    "sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
PRE_TOKENIZERS = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # HuggingFaceTB/SmolLM(2)
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # meta-llama/Meta-Llama-3-8B
}


def pre_tokenizer_name(tokenizer, folder: Path) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer (`tokenizer.ggml.pre`), or a clear error."""
    digest = sha256(str(tokenizer.encode(_CHECK_TEXT)).encode()).hexdigest()
    if digest not in PRE_TOKENIZERS:
        raise ValueError(
            f"{folder}: llama.cpp would not recognise this BPE pre-tokenizer (check hash {digest}); supported: "
            f"{sorted(set(PRE_TOKENIZERS.values()))}. Use llama.cpp's convert_hf_to_gguf.py for this base"
        )
    return PRE_TOKENIZERS[digest]


def bpe_vocabulary(tokenizer, rows: int) -> tuple[list[str], list[int]]:
    """(tokens, GGUF token types) in id order, padded to the embedding rows (llama.cpp's `get_vocab_base`)."""
    import gguf

    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= rows:
        raise ValueError(f"the tokenizer has ids up to {max(vocab.values())} but the model only {rows} embedding rows")
    by_id = {i: token for token, i in vocab.items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(rows):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def bpe_fim_ids(tokenizer) -> dict[str, int] | None:
    """{'prefix', 'suffix', 'middle', 'eot'} ids of the BPE FIM tokens, or None for a base without them."""
    from codellama_hf.tokenizer import BPE_SENTINELS

    vocab = tokenizer.get_vocab()
    if not all(token in vocab for token in BPE_SENTINELS):
        return None
    return dict(zip(("prefix", "suffix", "middle", "eot"), (vocab[t] for t in BPE_SENTINELS), strict=True))


def write_bpe_tokenizer(writer, folder: Path, tokenizer, rows: int) -> dict[str, int] | None:
    """Add the byte-level BPE tokenizer of `folder` to a GGUFWriter; returns its FIM ids (export.gguf writes them)."""
    import gguf

    from codellama_hf.tokenizer.bpe import adds_bos

    tokens, types = bpe_vocabulary(tokenizer, rows)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(tokenizer, folder))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=rows)
    if not special.merges:
        raise ValueError(f"{folder}: tokenizer.json has no BPE merges; llama.cpp cannot tokenize without them")
    special.chat_template = None  # written by export.gguf, as for SentencePiece models
    special.add_special_token = {"bos": adds_bos(tokenizer), "eos": False}
    special.add_to_gguf(writer, quiet=True)
    return bpe_fim_ids(tokenizer)
