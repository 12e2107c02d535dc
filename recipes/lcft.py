"""Long-context fine-tuning (LCFT): continue a Code Llama model on 16,384-token sequences with RoPE theta 10^6.

Paper (§2.4, §2.6): learning rate 2e-5, sequences of 16,384 tokens, RoPE base period reset from 10,000 to
1,000,000, batches of 2M tokens (7B, 13B) or 1M (34B), 10,000 steps (3,000 for 7B, 11,000 for 34B). Theta is set
through the config's `rope_parameters` before the model is built (transformers 5 ignores `rope_theta=`), checked
in the rotary embedding before the first step, and saved under both config keys.

    accelerate launch recipes/lcft.py                      # tiny preset on CPU: a few minutes
    accelerate launch --config_file accelerate_configs/zero3.yaml recipes/lcft.py \\
        --config recipes/configs/7b/lcft.yaml --model_name_or_path outputs/7b/code

The tiny preset continues outputs/tiny/code (run `accelerate launch recipes/code.py` first) or, when that does
not exist, a random tiny model.
"""

from pathlib import Path

from codellama_hf.training import main

if __name__ == "__main__":
    main("lcft", default_config=Path(__file__).parent / "configs" / "tiny" / "lcft.yaml")
