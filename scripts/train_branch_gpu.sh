#!/usr/bin/env bash
# Train branch v5 (configs/tunemv3d-v5-tiny.yaml) on one CUDA GPU, from nothing but this checkout:
# render the 8000-object training set with every core, run three steps on a small set to fail fast,
# then train until the step count of the config or the time budget, whichever comes first.
#
#   scripts/train_branch_gpu.sh OUT [SECONDS]
#
# OUT receives the branch (controlnet/ and neus/ of model/, the EMA weights), its model card, log.jsonl
# and config.yaml; SECONDS bounds the whole script's wall-clock time (a lent machine that is taken back).
# NUM_OBJECTS (default 8000) and TRAIN_ARGS (extra `train` flags) are for trying the script on a CPU.
set -euo pipefail
out=${1:?usage: scripts/train_branch_gpu.sh OUT [SECONDS]}
budget=${2:-0}
config=configs/tunemv3d-v5-tiny.yaml
run=runs/tunemv3d-v5-tiny
export TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1  # fp32 training with TF32 matrix products
export TQDM_MININTERVAL=${TQDM_MININTERVAL:-15}
read -r -a extra <<< "${TRAIN_ARGS:-}"

python3 -c "import torch; print('torch', torch.__version__, 'cuda:', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')"
diffusers-mv3d render --split objects3d --num-objects "${NUM_OBJECTS:-8000}" --resolution 32 --out data/objects3d-8k \
    --workers "$(nproc)" > "$out/render.log" 2>&1 &
renderer=$!

smoke=$(mktemp -d)
diffusers-mv3d render --split objects3d --num-objects 8 --resolution 32 --out "$smoke/data" --workers 2 > /dev/null 2>&1
diffusers-mv3d train --config $config --data-dir "$smoke/data" --output-dir "$smoke/run" --batch-size 4 --num-workers 0 \
    --stop-at-step 3 "${extra[@]}" 2>&1 | tail -n 2
echo "smoke run: 3 steps done at ${SECONDS} s"

wait $renderer || { tail -n 20 "$out/render.log"; exit 1; }
echo "rendered at ${SECONDS} s: $(ls data/objects3d-8k | wc -l) entries"
rm "$out/render.log"

limit=()
if [ "$budget" -gt 0 ]; then  # leave a minute for the final checkpoint and the copies
    limit=(--max-minutes "$(python3 -c "print(max(0.5, ($budget - $SECONDS - 60) / 60))")")
fi
diffusers-mv3d train --config $config "${limit[@]}" "${extra[@]}"
echo "trained at ${SECONDS} s"

mkdir -p "$out/controlnet" "$out/neus"
cp $run/model/controlnet/* "$out/controlnet/"
cp $run/model/neus/* "$out/neus/"
cp $run/model/README.md $run/log.jsonl $run/config.yaml "$out/"
tail -n 1 $run/log.jsonl
