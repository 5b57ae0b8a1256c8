#!/usr/bin/env bash
# Evaluate a merged model on a dataset split (ReasonMap-Plus or synthetic): bash scripts/eval.sh MODEL DATA [extra args]
# Extra args go to `rewardmap eval` (--engine vllm, --limit N, --out DIR, ...). Reruns resume from <out>/answers.jsonl.
set -euo pipefail
# Paths are taken relative to the current folder; run from the repo root unless rewardmap is pip-installed.
if [ "$#" -lt 2 ]; then
  echo "usage: bash scripts/eval.sh MODEL_DIR DATA_DIR [rewardmap eval options]" >&2
  exit 2
fi
MODEL="$1"
DATA="$2"
shift 2
exec python -m rewardmap.cli eval --model "$MODEL" --data "$DATA" "$@"
