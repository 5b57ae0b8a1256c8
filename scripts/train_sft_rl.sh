#!/usr/bin/env bash
# SFT -> RL: the RewardMap recipe started from a merged SFT model: bash scripts/train_sft_rl.sh model.path=DIR
set -euo pipefail
cd "$(dirname "$0")/.."
exec bash scripts/reward_map.sh --config configs/train_sft_rl.yaml "$@"
