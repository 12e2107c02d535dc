"""The 16 pieces Code Llama adds to Llama 2's vocabulary, and the four infilling sentinels among them."""

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

# Byte-level BPE bases (Llama 3-style, SmolLM2) get the four sentinels as added special tokens under Code Llama's
# names without SentencePiece's "▁", appended after the base vocabulary in this order (tokenizer/bpe.py).
BPE_SENTINELS = ("<PRE>", "<SUF>", "<MID>", "<EOT>")
