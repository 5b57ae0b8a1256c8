#!/usr/bin/env bash
# The paper's six other benchmarks through VLMEvalKit. Run from a VLMEvalKit checkout after adding MODEL_NAME to
# vlmeval/config.py (README "Evaluation": Qwen2VLChat, min_pixels=1280*28*28, max_pixels=16384*28*28).
# Usage: bash /path/to/rewardmap/scripts/eval_other_benchmarks.sh MODEL_NAME [extra run.py args]
set -euo pipefail
if [ "$#" -lt 1 ] || [ ! -f run.py ] || [ ! -f vlmeval/config.py ]; then
  echo "usage: cd VLMEvalKit && bash <rewardmap>/scripts/eval_other_benchmarks.sh MODEL_NAME [args]" >&2
  exit 2
fi
MODEL_NAME="$1"
shift
exec python run.py --data SEEDBench2_Plus SpatialEval VStarBench HRBench4K ChartQA_TEST MMStar \
  --model "$MODEL_NAME" "$@"
