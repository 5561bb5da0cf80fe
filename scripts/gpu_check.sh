#!/usr/bin/env bash
# The first call on a GPU host (../shared/DEVICE.md): checks and measures the current code in at most 8 minutes,
# with only what the host has (torch, torchvision, triton, numba, opencv, timm; no FFCV, DALI or FAISS).
#
#   bash scripts/gpu_check.sh [DATA [OUT]]        DATA: a folder of Fashion-MNIST's idx files (default .fm,
#                                                 carried beside the code); OUT: default $OUT, else /tmp/gpu_check
#   bash scripts/gpu_check.sh ffcv [DATA [OUT]]   follow-up: FFCV from its bundle part (.bundle/part-*), the gpu
#                                                 FFCV tests, eval.bench --loader ffcv,synthetic at ResNet-50/224
#   bash scripts/gpu_check.sh dali [DATA [OUT]]   follow-up: DALI from its five bundle parts, the gpu DALI tests
#                                                 and scripts/sweep_dali.py
# The bundle parts: ../shared/device/bundle.sh .bundle ffcv (or dali), here; carry .bundle (and .fm).
#
# Base: the gpu-marked tests that need none of FFCV, DALI or FAISS (<= 200 s), then scripts/gpu_check.py
# (<= 260 s): the device loader's epoch against the synthetic ceiling, the bare step eager and compiled at
# ResNet-50/224 and ResNet-18/28, what BSIM, SePP and the guard add to a step, the fused kNN at 1.28M x 128, and
# each method's steps under torch.cuda.set_sync_debug_mode("error"). Everything goes to OUT (JSON and logs);
# the table is printed last. tests/test_gpu_check.py runs the Python part's dry run on the CPU.
set -uo pipefail
MODE=base
case "${1:-}" in ffcv|dali) MODE=$1; shift ;; esac
DATA=${1:-.fm}
OUT=${2:-${OUT:-/tmp/gpu_check}}
mkdir -p "$OUT"
export FASHION_MNIST_DIR=$DATA PYTHONPATH=/tmp/site:$PWD PYTHONWARNINGS=ignore PYTHONUNBUFFERED=1
start=$(date +%s)
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__)"
  git rev-parse HEAD 2>/dev/null; } > "$OUT/versions.txt" 2>&1
cat "$OUT/versions.txt"

install_bundle() {   # the parts of ../shared/device/bundle.sh, carried in .bundle
  [ -d /tmp/site ] && return 0
  ls .bundle/part-* >/dev/null 2>&1 || { echo "no .bundle/part-*: make them with ../shared/device/bundle.sh"; exit 2; }
  cat .bundle/part-* > /tmp/bundle.tar && mkdir -p /tmp/w && tar xf /tmp/bundle.tar -C /tmp/w \
    && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/w/*.whl 2>&1 | tail -2
}

case $MODE in
base)
  # FFCV's and DALI's test files need their packages; test_mining's gpu test needs only triton
  timeout 200 python3 -m pytest -q -m gpu tests/test_gpu.py tests/test_device.py tests/test_mining.py \
    -p no:cacheprovider > "$OUT/gpu_tests.txt" 2>&1
  echo "gpu tests (exit $?): $(tail -1 "$OUT/gpu_tests.txt")"
  timeout 260 python3 scripts/gpu_check.py --data "$DATA" --out "$OUT" > "$OUT/gpu_check.log" 2>&1
  echo "gpu_check.py exit $?"
  grep "^\[gpu_check\]" "$OUT/gpu_check.log"
  ;;
ffcv)
  install_bundle
  timeout 150 python3 -m pytest -q -m gpu tests/test_ffcv.py -p no:cacheprovider > "$OUT/gpu_tests_ffcv.txt" 2>&1
  echo "ffcv gpu tests (exit $?): $(tail -1 "$OUT/gpu_tests_ffcv.txt")"
  [ -d /tmp/inet ] || python3 scripts/make_jpegs.py /tmp/inet --n 10000 --classes 100 > "$OUT/jpegs.txt"
  [ -f /tmp/inet.beton ] || python3 -m loaders.prepare --dataset imagefolder --data /tmp/inet --out /tmp/inet.beton \
    --max-resolution 256 --write-mode jpg --jpeg-quality 90 --workers 16 --no-progress > "$OUT/prepare.txt" 2>&1
  timeout 300 python3 -m eval.bench --loader ffcv,synthetic --dataset imagefolder --data /tmp/inet \
    --beton /tmp/inet.beton --arch resnet50 --res 224 --batch-size 256 --workers 16 --compile --steps 30 \
    --warmup 20 --repeats 3 --json "$OUT/bench_ffcv_r50.json" > "$OUT/bench_ffcv_r50.txt" 2>&1
  echo "eval.bench exit $?"; tail -8 "$OUT/bench_ffcv_r50.txt"
  ;;
dali)
  install_bundle
  timeout 200 python3 -m pytest -q -m gpu tests/test_dali.py -p no:cacheprovider > "$OUT/gpu_tests_dali.txt" 2>&1
  echo "dali gpu tests (exit $?): $(tail -1 "$OUT/gpu_tests_dali.txt")"
  [ -d /tmp/inet ] || python3 scripts/make_jpegs.py /tmp/inet --n 10000 --classes 100 > "$OUT/jpegs.txt"
  timeout 300 python3 scripts/sweep_dali.py --data /tmp/inet --res 224 --batch-size 256 --threads 16 \
    --json "$OUT/sweep_dali.json" > "$OUT/sweep_dali.txt" 2>&1
  echo "sweep_dali exit $?"; grep -v -i warn "$OUT/sweep_dali.txt" | tail -12
  ;;
esac
echo "wall: $(( $(date +%s) - start )) s"
[ -f "$OUT/gpu_check.txt" ] && [ "$MODE" = base ] && cat "$OUT/gpu_check.txt"
exit 0
