#!/usr/bin/env bash
# Everything the GPU host needs beside the repository, made here in one command, and the device tool's carry
# list for it. What travels (the tracked files and these folders) must stay under 64 MiB: checked, refused above.
#
#   bash scripts/gpu_prepare.sh [ffcv]
#
#   .fm/          Fashion-MNIST's idx files, from $FASHION_MNIST_DIR (else Debian's dataset-fashion-mnist): 30 MB
#   .imagenette/  real JPEGs for the decode paths: train/<wnid>/ the first $PER_CLASS (200) files of each of the ten
#                 classes and val/<wnid>/ the first $VAL (10), from $IMAGENETTE (default /work/data/imagenette,
#                 Imagenette's train/ and val/ layout): 2,100 files, 21 MB
#   .bundle/      with ffcv: FFCV's one wheel part (../shared/device/bundle.sh .bundle ffcv), 9 MB. DALI's five
#                 parts (260 MB) cannot travel with the rest: one part per call, appended there (DEVICE.md).
# Each folder is git-ignored (.gitignore). On the GPU host: bash scripts/gpu_check.sh (reads .fm and .imagenette).
set -euo pipefail
cd "$(dirname "$0")/.."
FM_SRC=${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
SRC=${IMAGENETTE:-/work/data/imagenette}
PER_CLASS=${PER_CLASS:-200}
VAL=${VAL:-10}
LIMIT=$(( 64 * 1024 * 1024 ))

ls "$FM_SRC"/train-images-idx3-ubyte* >/dev/null 2>&1 || { echo "no Fashion-MNIST idx files in $FM_SRC" \
  "(set FASHION_MNIST_DIR)" >&2; exit 2; }
rm -rf .fm && mkdir -p .fm && cp "$FM_SRC"/*-ubyte* .fm/

[ -d "$SRC/train" ] || { echo "no Imagenette in $SRC (train/<wnid>/*.JPEG; set IMAGENETTE)" >&2; exit 2; }
rm -rf .imagenette
for split in train val; do
  n=$PER_CLASS; [ $split = val ] && n=$VAL
  for d in "$SRC/$split"/*/; do
    c=$(basename "$d")
    mkdir -p ".imagenette/$split/$c"
    find "$d" -maxdepth 1 -type f -iname '*.jp*g' | sort | awk -v n="$n" 'NR <= n' \
      | xargs -r cp -t ".imagenette/$split/$c"
  done
done

carry='".fm", ".imagenette"'
if [ "${1:-}" = ffcv ]; then
  [ -f .bundle/part-00 ] || ../shared/device/bundle.sh .bundle ffcv
  carry="$carry, \".bundle\""
fi

bytes() { du -cb "$@" 2>/dev/null | tail -1 | cut -f1; }
tracked=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
total=$tracked
for d in .fm .imagenette .bundle; do
  [ -d "$d" ] || continue
  b=$(bytes "$d"); total=$(( total + b ))
  printf "%-12s %6.1f MiB  %s files\n" "$d" "$(echo "$b / 1048576" | bc -l)" "$(find "$d" -type f | wc -l)"
done
printf "%-12s %6.1f MiB\n%-12s %6.1f MiB of 64\n" "repository" "$(echo "$tracked / 1048576" | bc -l)" \
  "in all" "$(echo "$total / 1048576" | bc -l)"
if [ "$total" -gt "$LIMIT" ]; then
  echo "over the device tool's 64 MiB: lower PER_CLASS (now $PER_CLASS)" >&2
  exit 1
fi
echo "device tool: run(carry=[$carry], command=\"bash scripts/gpu_check.sh${1:+ $1}\")"
