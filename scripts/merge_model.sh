#!/usr/bin/env bash
# Merge a training checkpoint (FSDP2/DeepSpeed shards or unsharded) or a LoRA adapter into a plain Hugging Face model:
#   bash scripts/merge_model.sh CKPT_DIR OUT_DIR [--dtype bf16|fp16|fp32] [--base-model DIR] [--overwrite] [--verify]
set -euo pipefail
if [ "$#" -lt 2 ]; then
  echo "usage: bash scripts/merge_model.sh CKPT_DIR OUT_DIR [--dtype bf16] [--base-model DIR] [--overwrite] [--verify]" >&2
  exit 2
fi
if ! command -v rewardmap >/dev/null; then source "$(dirname "$0")/../.venv/bin/activate"; fi  # make install's venv
exec rewardmap merge "$@"
