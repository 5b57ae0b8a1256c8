#!/usr/bin/env bash
# RewardMap GRPO training (the paper recipe): bash scripts/reward_map.sh [--config F] [key=value ...]
# One node: NPROC processes (default: every GPU, or 1 without GPUs). Several nodes: run this on each node with
# NNODES, NODE_RANK (0 on the first), MASTER_ADDR (the first node's address) and MASTER_PORT set alike.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v torchrun >/dev/null; then source .venv/bin/activate; fi  # the CPU set-up's venv (make install)
GPUS="$(python -c 'import torch; print(torch.cuda.device_count())')"
# torchrun forwards these to every worker, which then stops after its step with a checkpoint (SLURM's --signal: USR1)
export PET_SIGNALS_TO_HANDLE="${PET_SIGNALS_TO_HANDLE:-SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1}"
exec torchrun --nproc_per_node "${NPROC:-$(( GPUS > 0 ? GPUS : 1 ))}" --nnodes "${NNODES:-1}" \
  --node_rank "${NODE_RANK:-0}" --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" \
  -m rewardmap.cli train --config configs/reward_map.yaml "$@"
