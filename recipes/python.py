"""Python specialisation: continue a code-trained model on a Python-heavy mixture, without infilling.

Paper (§2.2, Table 1; §2.6): 100B tokens of Python 75%, code 10%, natural language about code 10%, natural
language 5%; peak learning rate 1e-4; otherwise as the code stage (AdamW (0.9, 0.95), 1,000 warm-up steps, cosine
to 1/30 of the peak, 4M-token batches of 4,096-token sequences). The Python models are trained without FIM.

    accelerate launch recipes/python.py                    # tiny preset: continues outputs/tiny/code
    accelerate launch --config_file accelerate_configs/zero3.yaml recipes/python.py \\
        --config recipes/configs/7b/python.yaml
"""

from pathlib import Path

from codellama_hf.training import main

if __name__ == "__main__":
    main("python", default_config=Path(__file__).parent / "configs" / "tiny" / "python.yaml")
