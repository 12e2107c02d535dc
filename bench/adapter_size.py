"""Adapter size when the vocabulary grows: new rows only (peft trainable_token_indices) vs whole embedding matrices.

For each base, the same LoRA (r, all linear layers of the decoder) is set up by codellama_hf.adapters.apply_adapters
twice, on a model whose embeddings grew by the infilling pieces: once by default (only the new rows are trained and
saved) and once with `lora_modules_to_save: [embed_tokens, lm_head]` (whole matrices, the old way). The bytes are
those of the tensors peft saves (`get_peft_model_state_dict`, as `save_pretrained` writes them without the grown
matrices), in bf16; the safetensors header (a few KB) is not counted. "before" is what the same whole-matrix
adapter weighed before the toolkit turned off peft's save_embedding_layers="auto" for grown vocabularies (which
adds each matrix twice more: the frozen original and the base weight). Large bases are built on the meta device, so
nothing is allocated; the tiny base is also saved for real and its file measured.

    python bench/adapter_size.py [--r 16]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name -> (models.llama_config size or None, saved vocabulary, grown vocabulary, config overrides)
BASES = {
    "7b (Llama 2 -> Code Llama)": ("7b", 32000, 32016, {}),
    "13b (Llama 2 -> Code Llama)": ("13b", 32000, 32016, {}),
    "SmolLM2-135M (+4 FIM tokens)": (
        None,
        49152,
        49156,
        dict(
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            tie_word_embeddings=True,
        ),
    ),
    "tiny (4000 -> 4016)": ("tiny", 4000, 4016, {}),
}


def _config(size, vocab, overrides):
    from codellama_hf.models import llama_config

    return llama_config(size or "tiny", vocab_size=vocab, **overrides)


def adapter_bytes(
    size, saved: int, grown: int, overrides: dict, r: int, *, whole: bool, meta: bool, before: bool = False
) -> int:
    """Bytes of the adapter; before=True: as saved before this change (peft's save_embedding_layers="auto")."""
    import torch
    from peft import get_peft_model, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    from codellama_hf.adapters import AdapterArguments, new_row_tokens

    with tempfile.TemporaryDirectory() as tmp:
        _config(size, saved, overrides).save_pretrained(tmp)  # the base checkpoint's vocabulary
        config = _config(size, saved, overrides)
        with torch.device("meta" if meta else "cpu"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.resize_token_embeddings(grown, mean_resizing=False)
        model.name_or_path = tmp
        options = AdapterArguments(
            use_peft=True,
            lora_r=r,
            lora_modules_to_save=["embed_tokens", "lm_head"] if whole else None,
        )
        # apply_adapters' own steps, less the base fingerprint (it reads weights, which meta tensors do not have)
        peft_model = get_peft_model(model, options.lora_config(new_row_tokens(model, options)))
        embedding_layers = "auto" if before else False
        state = get_peft_model_state_dict(peft_model, save_embedding_layers=embedding_layers)
        computed = sum(t.numel() * 2 for t in state.values())  # bf16
        if meta:
            return computed
        from codellama_hf.adapters import adapter_size

        peft_model.save_pretrained(Path(tmp) / "adapter", save_embedding_layers=embedding_layers)
        return adapter_size(Path(tmp) / "adapter")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--r", type=int, default=16, help="LoRA rank (AdapterArguments' default: 16)")
    args = parser.parse_args()
    rows = []
    for name, (size, saved, grown, overrides) in BASES.items():
        meta = size != "tiny"
        new = adapter_bytes(size, saved, grown, overrides, args.r, whole=False, meta=meta)
        whole = adapter_bytes(size, saved, grown, overrides, args.r, whole=True, meta=meta)
        before = adapter_bytes(size, saved, grown, overrides, args.r, whole=True, meta=meta, before=True)
        rows.append(
            {
                "base": name,
                "new_rows_bytes": new,
                "whole_matrices_bytes": whole,
                "before_bytes": before,
                "measured": not meta,
            }
        )
        print(
            f"{name:29s} new rows {new:>13,} B ({new / 2**20:7.1f} MiB) | whole matrices {whole:>13,} B "
            f"({whole / 2**20:7.1f} MiB) | before {before:>13,} B ({before / 2**20:7.1f} MiB) = "
            f"{before / new:5.1f}x new rows | {'file on disk' if not meta else 'computed'}"
        )
    print(json.dumps({"r": args.r, "dtype": "bfloat16", "rows": rows}))


if __name__ == "__main__":
    main()
