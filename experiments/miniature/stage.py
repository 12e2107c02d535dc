"""One training stage of the miniature, run as its own process (accelerate's state is a process-wide singleton).

    python experiments/miniature/stage.py STAGE [--field value ...]

The stages are the library's own runners with the tiny recipes' configs; "pretrain" is the miniature's stand-in for
Llama 2's pretraining.
"""

import sys
from pathlib import Path

from codellama_hf.training import run_stage

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "configs" / "tiny"

if __name__ == "__main__":
    stage, argv = sys.argv[1], sys.argv[2:]
    run_stage(stage, default_config=RECIPES / f"{stage}.yaml", argv=argv)
