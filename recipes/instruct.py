"""Code Llama - Instruct: fine-tune a Code Llama model on instruction dialogs plus a rehearsal of code and language.

Paper (§2.5, §2.6): ~5B tokens in batches of 524,288 tokens; the instruct data (self-instruct triplets
from `codellama-hf instruct generate`, plus any dialogs you have; Meta also used its proprietary Llama 2 RLHF V5
data) with rehearsal data: code 6% and natural language 2%. Dialogs are encoded exactly as Meta's chat_completion
(codellama_hf/chat.py) with the loss on the assistant's tokens only; the saved tokenizer carries the chat template.

    accelerate launch recipes/instruct.py                  # tiny preset on CPU, output in outputs/tiny/instruct
    accelerate launch --config_file accelerate_configs/zero3.yaml recipes/instruct.py \\
        --config recipes/configs/7b/instruct.yaml
    python recipes/instruct.py --config recipes/configs/7b/instruct.yaml --plan_world_size 32 --plan_only
"""

from pathlib import Path

from codellama_hf.training import main

if __name__ == "__main__":
    main("instruct", default_config=Path(__file__).parent / "configs" / "tiny" / "instruct.yaml")
