#!/usr/bin/env bash
# Every loader alone on real JPEG files (issue 45), beside the decode ceiling (the same files decoded whole by as
# many processes) and the users' baseline (lightly's SimCLRTransform in a DataLoader), at 224, 128 and 64 px, in
# one eval.bench run per set; then end to end at 224 on Imagenette (does the augmentation overlap the step?).
#   bash scripts/bench_real_jpegs.sh IMAGENETTE_DIR IMAGENET_SAMPLE_DIR [OUT (default docs/bench_jpegs)] [BETONS]
# IMAGENETTE_DIR: github:thunderInfy/imagenette (train/<wnid>/*.JPEG, 224x224); IMAGENET_SAMPLE_DIR:
# github:EliSchwartz/imagenet-sample-images (1000 full-size ImageNet JPEGs, one per class).
set -euo pipefail
cd "$(dirname "$0")/.."
INETTE=${1:?imagenette dir}; INET=${2:?imagenet-sample dir}; OUT=${3:-docs/bench_jpegs}; BETONS=${4:-/tmp/betons}
PY=${PY:-.venv/bin/python}
LOADERS=${LOADERS:-torch,ffcv,dali,tvpil}
mkdir -p "$OUT" "$BETONS"
[ -f "$BETONS/inette.beton" ] || $PY -m loaders.prepare --data "$INETTE/train" --out "$BETONS/inette.beton" --no-progress
[ -f "$BETONS/inet.beton" ] || $PY -m loaders.prepare --data "$INET" --dataset images --out "$BETONS/inet.beton" --no-progress
common=(--arch resnet18 --batch-size 64 --loader-only --steps ${STEPS:-8} --repeats ${REPEATS:-3} --res ${RES:-224,128,64})
$PY -m eval.bench --loader "$LOADERS" --data "$INET" --dataset images --beton "$BETONS/inet.beton" "${common[@]}" \
    --json "$OUT/imagenet_sample.json" | tee "$OUT/imagenet_sample.txt"
$PY -m eval.bench --loader "$LOADERS" --data "$INETTE/train" --beton "$BETONS/inette.beton" "${common[@]}" \
    --json "$OUT/imagenette.json" | tee "$OUT/imagenette.txt"
if [ "${E2E:-1}" = 1 ]; then
  $PY -m eval.bench --loader torch --data "$INETTE/train" --arch resnet18 --batch-size 64 --res 224 --steps 6 \
      --repeats 2 --no-decode-ceiling --json "$OUT/imagenette_e2e.json" | tee "$OUT/imagenette_e2e.txt"
fi
