#!/bin/bash
# Two-node DeepSpeed ZeRO-3 run under SLURM: one `accelerate launch` per node, 8 GPU processes each.
#
#   sbatch accelerate_configs/launch_slurm_2nodes.sh recipes/code.py --config recipes/configs/7b/code.yaml
#
# Submit from the repository root (configs are read relative to it). Checkpoints land in the recipe's output_dir on
# shared storage; a requeued job continues with --resume_from_checkpoint latest (added below), which starts from
# scratch when no checkpoint exists yet. The batch plan is computed for the 16 processes, so the global batch in
# tokens is the same as on any other cluster shape.
#SBATCH --job-name=codellama-hf
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gres=gpu:8
#SBATCH --cpus-per-task=96
#SBATCH --exclusive
#SBATCH --requeue
#SBATCH --output=logs/%x-%j.out
set -euo pipefail

if [ "$#" -lt 1 ]; then
  echo "usage: sbatch $0 recipes/<stage>.py [recipe arguments...]" >&2
  exit 2
fi
mkdir -p logs
MAIN_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MAIN_PORT=${MAIN_PORT:-29500}
RECIPE_ARGS=$(printf ' %q' "$@")  # quoted again for the inner shell

# \$SLURM_NODEID is expanded on each node by the inner shell, giving each launcher its machine rank.
srun --ntasks="$SLURM_NNODES" --ntasks-per-node=1 bash -c "accelerate launch \
  --config_file accelerate_configs/zero3_2nodes.yaml \
  --num_machines $SLURM_NNODES \
  --num_processes $((SLURM_NNODES * 8)) \
  --machine_rank \$SLURM_NODEID \
  --main_process_ip $MAIN_NODE \
  --main_process_port $MAIN_PORT \
  $RECIPE_ARGS --resume_from_checkpoint latest"
