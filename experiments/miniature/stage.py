"""One training stage of the miniature, run as its own process (accelerate's state is a process-wide singleton).

    python experiments/miniature/stage.py STAGE [--field value ...]

The stages are the library's own runners with the tiny recipes' configs; "pretrain" is the miniature's stand-in for
Llama 2's pretraining.
"""

import sys
from pathlib import Path

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "configs" / "tiny"

if __name__ == "__main__":
    stage, argv = sys.argv[1], sys.argv[2:]
    if stage == "instruct":
        from codellama_hf.instruct import run_instruct

        run_instruct(default_config=RECIPES / "instruct.yaml", argv=argv)
    else:
        from codellama_hf.training import run_stage

        run_stage(stage, default_config=RECIPES / f"{stage}.yaml", argv=argv)
