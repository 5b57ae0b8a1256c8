#!/usr/bin/env bash
# sbatch scripts/reward_map_slurm.sh [key=value ...]: the recipe on one node, requeued and resumed at the time limit.
#SBATCH --job-name=rewardmap
#SBATCH --nodes=1
#SBATCH --gpus-per-node=8
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@900
# 900 s before the limit SLURM sends USR1 to this script, which passes SIGTERM to torchrun and on to every worker:
# they finish the step, write a checkpoint and exit 75; the job is requeued and trainer.resume=auto continues.
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
# How long torchrun waits for its workers to finish the step and the save once it has passed the signal on.
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT="${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-840}"
bash scripts/reward_map.sh "$@" &
trap 'kill -TERM $!; wait $! || true; scontrol requeue "$SLURM_JOB_ID"' USR1
wait $!
