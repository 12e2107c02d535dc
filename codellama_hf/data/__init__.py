"""Training data: FIM (fim.py), packing and the one collator (packing.py), the streaming path every stage reads
(stream.py) and the instruct stage's dialogs (sft.py)."""
