"""Training stages: configuration, the Stage registry, the trainer, checkpoints and lineage.

    from codellama_hf.training import Stage, register_stage, run_stage

`run_stage(name)` runs a registered stage (training/stages.py registers the paper's); see training/run.py.
"""

from codellama_hf.training.run import main, run_stage
from codellama_hf.training.stage import STAGES, Stage, StageData, get_stage, register_stage

__all__ = ["STAGES", "Stage", "StageData", "get_stage", "main", "register_stage", "run_stage"]
