"""Code training: continue Llama 2 on a code-heavy mixture, with fill-in-the-middle for 7B and 13B.

Paper (§2.2, Table 1; §2.6): 500B tokens of the Table 1 mixture (code 85%, natural language about code 8%,
natural language 7%); AdamW (0.9, 0.95), cosine schedule with 1,000 warm-up steps down to 1/30 of the peak;
peak learning rate 3e-4 (7B, 13B) or 1.5e-4 (34B); 4M-token batches of 4,096-token sequences; FIM on 90% of the
documents (half PSM, half SPM) for 7B and 13B, none for 34B.

    accelerate launch recipes/code.py                      # tiny preset on CPU, output in outputs/tiny/code
    accelerate launch --config_file accelerate_configs/zero3.yaml recipes/code.py \\
        --config recipes/configs/7b/code.yaml
    python recipes/code.py --config recipes/configs/7b/code.yaml --plan_world_size 64 --plan_only
"""

from pathlib import Path

from codellama_hf.training import main

if __name__ == "__main__":
    main("code", default_config=Path(__file__).parent / "configs" / "tiny" / "code.yaml")
