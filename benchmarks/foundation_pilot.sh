#!/usr/bin/env bash
# Foundation v2 pilot (issue 13): today's recipe (control) against the candidate recipes, each
# fine-tuning the shipped foundation (pipelines/tunemv3d-tiny, 3254 steps) for the same number of
# steps on the same data with the same seed, on one thread. Resumable: rerun to continue.
# Score with: python benchmarks/score_foundations.py runs/pilot-*/pipeline
#   usage: bash benchmarks/foundation_pilot.sh [STEPS] [RECIPE ...]
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-300}
shift || true
recipes=("$@")
[ ${#recipes[@]} -gt 0 ] || recipes=(control zsnr-v zsnr-v-minsnr offset)
for recipe in "${recipes[@]}"; do
  case $recipe in
    control) flags=() ;;
    zsnr-v) flags=(--prediction-type v_prediction --zero-terminal-snr) ;;
    zsnr-v-minsnr) flags=(--prediction-type v_prediction --zero-terminal-snr --snr-gamma 5) ;;
    offset) flags=(--noise-offset 0.1) ;;
    *) echo "unknown recipe $recipe (control, zsnr-v, zsnr-v-minsnr, offset)" >&2; exit 2 ;;
  esac
  diffusers-mv3d train-foundation --config configs/foundation-tiny.yaml --init-from pipelines/tunemv3d-tiny \
    --output-dir "runs/pilot-$recipe" --num-threads 1 --lr-warmup-steps 50 --stop-at-step "$steps" \
    --checkpointing-steps 100 --validation-steps 0 --resume latest "${flags[@]}"
done
