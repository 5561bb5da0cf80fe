#!/usr/bin/env bash
# The first call on a GPU host (../shared/DEVICE.md): checks and measures the current code in at most 8 minutes,
# with only what the host has (torch, torchvision, triton, numba, opencv, timm; no FFCV, DALI or FAISS).
#
#   bash scripts/gpu_prepare.sh [ffcv]        here, once: .fm, .imagenette (and .bundle), the carry list
#   bash scripts/gpu_check.sh [DATA [OUT]]    there: DATA a folder of Fashion-MNIST's idx files (default .fm);
#                                             OUT default $OUT, else /tmp/gpu_check; real JPEGs from $JPEGS
#                                             (default .imagenette, train/<wnid>/*.JPEG)
#   bash scripts/gpu_check.sh ffcv [DATA [OUT]]   follow-up: FFCV from its bundle part (.bundle/part-*), the gpu
#                                             FFCV tests, eval.bench --loader ffcv,synthetic at ResNet-50/224
#   bash scripts/gpu_check.sh dali [DATA [OUT]]   follow-up: DALI from its five bundle parts, the gpu DALI tests
#                                             and scripts/sweep_dali.py
#   bash scripts/gpu_check.sh plan            the parts, their limits and the estimate, nothing run
#   DRY=1 bash scripts/gpu_check.sh DATA OUT  the dry run on a CPU (tests/test_gpu_check.py): tiny sizes, the
#                                             limits x4, the gpu tests collected but not run; PARTS="name:s ..."
#                                             runs those parts only
#
# Base: each part in a process of its own under its own time limit (PARTS below, printed first with their sum);
# the sync and defect checks first. As each part ends, its rows are appended to OUT/gpu_check.txt (a part cut at
# its limit says so there), its figures merged into OUT/gpu_check.json, and its output appended to
# OUT/gpu_check.log: a run killed from outside keeps every part that finished. The table is printed last.
# The follow-ups train on the real JPEGs where they were carried (else on 10,000 made ones).
set -uo pipefail
MODE=base
case "${1:-}" in ffcv|dali|plan) MODE=$1; shift ;; esac
DATA=$(realpath -m "${1:-.fm}")
OUT=${2:-${OUT:-/tmp/gpu_check}}
JPEGS=$(realpath -m "${JPEGS:-.imagenette}")
export FASHION_MNIST_DIR=$DATA PYTHONPATH=/tmp/site:$PWD PYTHONWARNINGS=ignore PYTHONUNBUFFERED=1
start=$(date +%s)

# name:seconds, in order (the GPU's limits: their sum is the estimate, at most 480 s with the set-up)
PARTS=${PARTS:-sync:60 defects:40 gpu_tests:130 device_epoch:50 decode:35 addons:40 knn:25 bare_step:90}
SETUP=10
DEV=(--device cuda)
SCALE=1
if [ "${DRY:-0}" = 1 ]; then DEV=(--device cpu --tiny); SCALE=4; fi
total=$SETUP; for p in $PARTS; do total=$(( total + ${p#*:} )); done
plan=$(echo " $PARTS" | sed 's/ \([a-z_]*\):\([0-9]*\)/ \1 \2 s,/g; s/,$//')
echo "estimate: at most $total s on the GPU ($SETUP s set-up, then$plan)"
[ "$MODE" = plan ] && exit 0
mkdir -p "$OUT"

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU"
  python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__)"
  git rev-parse HEAD 2>/dev/null; } > "$OUT/versions.txt" 2>&1
cat "$OUT/versions.txt"
if [ "$MODE" = base ]; then   # the table's first row; a table, figures and log of an earlier run are replaced
  rm -f "$OUT/gpu_check.json" "$OUT/gpu_check.log"
  gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | awk 'NR == 1')
  echo "GPU check on ${gpu:-cpu} ($(awk '/^python/ {print "torch " $4}' "$OUT/versions.txt"), git" \
    "$(git rev-parse --short=8 HEAD 2>/dev/null), $(date +%F))" > "$OUT/gpu_check.txt"
fi

part() {   # part NAME SECONDS COMMAND...: run under its own limit; the log appended; a cut part said in the table
  local name=$1 limit=$(( $2 * SCALE )) t0
  shift 2
  t0=$(date +%s)
  echo "==== $name (limit $limit s)" >> "$OUT/gpu_check.log"
  timeout -k 5 "$limit" "$@" >> "$OUT/gpu_check.log" 2>&1
  local rc=$?
  if [ $rc = 124 ] || [ $rc = 137 ]; then echo "$name: CUT at its limit of $limit s" >> "$OUT/gpu_check.txt"; fi
  echo "[$name] exit $rc, $(( $(date +%s) - t0 )) s of $limit"
}

gpu_tests() {   # gpu_tests NAME FILES...: the gpu-marked tests of FILES; their summary line is the row
  local name=$1 log
  log=$(mktemp)
  shift
  local how=(-m gpu); [ "${DRY:-0}" = 1 ] && how=(-m gpu --co)   # the dry run collects them (no GPU to run on)
  python3 -m pytest -q "${how[@]}" -p no:cacheprovider "$@" > "$log" 2>&1
  local rc=$?
  cat "$log"
  echo "gpu tests, $name: $(grep -E "passed|failed|error|selected|collected|no tests" "$log" | tail -1)" \
    >> "$OUT/gpu_check.txt"
  rm -f "$log"
  return $rc
}

install_bundle() {   # the parts of ../shared/device/bundle.sh, carried in .bundle
  [ -d /tmp/site ] && return 0
  ls .bundle/part-* >/dev/null 2>&1 || { echo "no .bundle/part-*: make them here (bash scripts/gpu_prepare.sh" \
    "ffcv; DALI: ../shared/device/bundle.sh .bundle dali)"; exit 2; }
  cat .bundle/part-* > /tmp/bundle.tar && mkdir -p /tmp/w && tar xf /tmp/bundle.tar -C /tmp/w \
    && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/w/*.whl 2>&1 | tail -2
}

jpegs_for_bench() {   # INET: the carried real JPEGs, else 10,000 made ones; BETON: where ffcv's .beton of them goes
  if [ -d "$JPEGS/train" ]; then INET=$JPEGS/train BETON=/tmp/real.beton; else INET=/tmp/inet BETON=/tmp/inet.beton
    [ -d /tmp/inet ] || python3 scripts/make_jpegs.py /tmp/inet --n 10000 --classes 100 > "$OUT/jpegs.txt"; fi
}

export -f gpu_tests
export OUT DRY
case $MODE in
base)
  for p in $PARTS; do
    name=${p%:*}
    case $name in
      defects) part "$name" "${p#*:}" bash -c 'gpu_tests defects tests/test_gpu_paths.py tests/test_device.py \
                 tests/test_mining.py' ;;
      gpu_tests) part "$name" "${p#*:}" bash -c 'gpu_tests training tests/test_gpu.py' ;;
      *) part "$name" "${p#*:}" python3 scripts/gpu_check.py "${DEV[@]}" --data "$DATA" --jpegs "$JPEGS" \
           --out "$OUT" --parts "$name" ;;
    esac
  done
  ;;
ffcv)
  install_bundle
  jpegs_for_bench
  timeout 150 python3 -m pytest -q -m gpu tests/test_ffcv.py -p no:cacheprovider > "$OUT/gpu_tests_ffcv.txt" 2>&1
  echo "ffcv gpu tests (exit $?): $(tail -1 "$OUT/gpu_tests_ffcv.txt")"
  [ -f "$BETON" ] || python3 -m loaders.prepare --dataset imagefolder --data "$INET" --out "$BETON" \
    --max-resolution 256 --write-mode jpg --jpeg-quality 90 --workers 16 --no-progress > "$OUT/prepare.txt" 2>&1
  timeout 300 python3 -m eval.bench --loader ffcv,synthetic --dataset imagefolder --data "$INET" \
    --beton "$BETON" --arch resnet50 --res 224 --batch-size 256 --workers 16 --compile --steps 30 \
    --warmup 20 --repeats 3 --json "$OUT/bench_ffcv_r50.json" > "$OUT/bench_ffcv_r50.txt" 2>&1
  echo "eval.bench exit $?"; tail -8 "$OUT/bench_ffcv_r50.txt"
  ;;
dali)
  install_bundle
  jpegs_for_bench
  timeout 200 python3 -m pytest -q -m gpu -k dali tests/test_dali.py tests/test_gpu.py -p no:cacheprovider \
    > "$OUT/gpu_tests_dali.txt" 2>&1
  echo "dali gpu tests (exit $?): $(tail -1 "$OUT/gpu_tests_dali.txt")"
  timeout 300 python3 scripts/sweep_dali.py --data "$INET" --res 224 --batch-size 256 --threads 16 \
    --json "$OUT/sweep_dali.json" > "$OUT/sweep_dali.txt" 2>&1
  echo "sweep_dali exit $?"; grep -v -i warn "$OUT/sweep_dali.txt" | tail -12
  ;;
esac
echo "wall: $(( $(date +%s) - start )) s"
[ "$MODE" = base ] && cat "$OUT/gpu_check.txt"
exit 0
