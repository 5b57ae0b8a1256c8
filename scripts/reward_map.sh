#!/usr/bin/env bash
# RewardMap GRPO training (the paper recipe) on one node's GPUs: bash scripts/reward_map.sh [--config F] [key=value ...]
set -euo pipefail
cd "$(dirname "$0")/.."
NPROC="${NPROC:-8}"
ACCELERATE_CONFIG="${ACCELERATE_CONFIG:-configs/accelerate/fsdp2.yaml}"
exec accelerate launch --config_file "$ACCELERATE_CONFIG" --num_processes "$NPROC" \
  -m rewardmap.cli train --config configs/reward_map.yaml "$@"
