"""Tokens/s of our FIM + packing pipeline against plain batched tokenization of the same documents, one process.

Corpus: the Python standard library's sources on this machine. Baselines, measured in the same run:
  (a) plain:     `dataset.map(lambda b: tokenizer(b["text"]), batched=True)`, the usual way to tokenize a dataset;
  (a') raw:      the Rust tokenizer's `encode_batch_fast` on a Python list (no dataset, no Python objects kept),
                 a lower bound on any pipeline's time, printed for reference;
  (b) ours:      `pack_dataset(..., fim=FIMConfig())` (tokenize, FIM at rate 0.9, pack into 4096-token rows).
Prints tokens/s for each, the ratio b/a (target >= 0.85) and the packing efficiency (target >= 0.99).

    python bench/data_pipeline.py [--documents 3000] [--seq-len 4096] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import sysconfig
import tempfile
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one process, one thread: a fair comparison

import datasets  # noqa: E402
from timing import best_of  # noqa: E402  (bench/timing.py)
from transformers import AutoTokenizer  # noqa: E402

from codellama_hf.assets import llama2_tokenizer_dir  # noqa: E402
from codellama_hf.fim import FIMConfig  # noqa: E402
from codellama_hf.packing import pack_dataset, packing_efficiency  # noqa: E402
from codellama_hf.tokenizer import build_codellama_tokenizer  # noqa: E402


def stdlib_documents(limit: int) -> list[str]:
    paths = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("**/*.py"))
    docs = [p.read_text(encoding="utf-8", errors="replace") for p in paths]
    return [d for d in docs if d.strip()][:limit]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=3000)
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    datasets.disable_caching()
    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory() as tmp:
        tok = AutoTokenizer.from_pretrained(
            build_codellama_tokenizer(llama2_tokenizer_dir() / "tokenizer.model", Path(tmp) / "tok")
        )
    docs = stdlib_documents(args.documents)
    ds = datasets.Dataset.from_dict({"text": docs})
    tokens = sum(len(e.ids) for e in tok.backend_tokenizer.encode_batch_fast(docs, add_special_tokens=False))
    print(
        f"corpus: {len(docs)} standard-library files, {sum(map(len, docs)) / 1e6:.1f} M chars, "
        f"{tokens / 1e6:.2f} M tokens"
    )

    t_raw, _ = best_of(args.repeats, lambda: tok.backend_tokenizer.encode_batch_fast(docs, add_special_tokens=False))
    t_plain, _ = best_of(args.repeats, lambda: ds.map(lambda b: tok(b["text"]), batched=True, remove_columns=["text"]))
    t_ours, packed = best_of(args.repeats, lambda: pack_dataset(ds, tok, seq_len=args.seq_len, fim=FIMConfig()))

    rows = [
        ("(a') raw Rust encode_batch_fast", t_raw),
        ("(a)  plain batched tokenization", t_plain),
        ("(b)  FIM + packing (ours)", t_ours),
    ]
    for name, seconds in rows:
        print(f"{name:34s} {seconds:7.2f} s  {tokens / seconds / 1e3:9.1f} k tokens/s")
    print(f"ratio b/a  = {t_plain / t_ours:.3f}   (target >= 0.85)")
    print(f"ratio b/a' = {t_raw / t_ours:.3f}   (reference: against the bare Rust tokenizer)")
    print(
        f"packing efficiency = {packing_efficiency(packed):.4f}   "
        f"(target >= 0.99; {len(packed)} rows of {args.seq_len})"
    )


if __name__ == "__main__":
    main()
