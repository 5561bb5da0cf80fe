#!/usr/bin/env bash
# On the GPU machine (../shared/DEVICE.md), from the repository root, after the bundle's parts were appended
# to /tmp/bundle.tar: install FFCV + DALI, run the tests marked gpu, make ImageNet-sized JPEGs, write a
# .beton, and benchmark every loader against the synthetic ceiling in one run per model. Results in $OUT.
# SWEEP=1: first time the DALI pipeline's stages and settings (scripts/sweep_dali.py); BENCH_ARGS: more flags
# for eval.bench (e.g. "--dali-branchless --dali-hw-load 0.9"); BEST=1: add the flags of the sweep's fastest
# row (kept in /tmp while the machine is warm, so a later call can follow the sweep); CFGS="" skips the benchmarks;
# REPEATS / BUDGET: timed windows per loader and the seconds a window may take (the slow tvpil baseline).
# SMALL=1: the small-data part (--loader device vs torch vs synthetic, ResNet-18 on Fashion-MNIST at 28 px, and
# a short training run for the seconds per epoch, and the non-finite guard's cost: the step with
# --nonfinite-limit 20 and 0); Fashion-MNIST's idx files travel in $FM (default .fm: bash scripts/gpu_prepare.sh;
# carry .fm), and the tests read them from FASHION_MNIST_DIR, set here.
# TESTS=1 runs the gpu tests that need the bundle (DALI, FFCV); scripts/gpu_check.sh runs the others.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
FM=$(realpath -m "${FM:-.fm}")
export FASHION_MNIST_DIR=$FM
N=${N:-10000}
if [ -f /tmp/bundle.tar ] && [ ! -d /tmp/site ]; then
  mkdir -p /tmp/w && tar xf /tmp/bundle.tar -C /tmp/w
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/w/*.whl .whl/extra/*.whl 2>&1 | tail -2
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONWARNINGS=ignore
python3 -c "import ffcv, nvidia.dali, yaml, tqdm, torch; print('ffcv', ffcv.__version__, 'dali', nvidia.dali.__version__, 'torch', torch.__version__, torch.cuda.get_device_name())" 2>&1 | tail -1 | tee "$OUT/versions.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >> "$OUT/versions.txt" 2>&1
if [ "${TESTS:-1}" = 1 ]; then
  timeout ${TEST_TIMEOUT:-300} python3 -m pytest -q -m gpu -k "dali or ffcv" tests/test_dali.py tests/test_ffcv.py \
    tests/test_gpu.py -p no:cacheprovider 2>&1 | tail -25 > "$OUT/gpu_tests.txt"
  tail -3 "$OUT/gpu_tests.txt"
fi
if [ "${SMALL:-0}" = 1 ]; then
  timeout 120 python3 -m pytest -q -m gpu tests/test_device.py -p no:cacheprovider 2>&1 | tail -3 | tee "$OUT/gpu_tests_device.txt"
  timeout ${SMALL_TIMEOUT:-280} python3 -m eval.bench --loader device,torch,synthetic --dataset fashion-mnist --data "$FM" \
    --arch resnet18 --res 28 --batch-size 256 --workers 16 --steps "${STEPS:-50}" --warmup 10 --compile-augment --repeats "${REPEATS:-3}" --budget-s "${BUDGET:-15}" \
    ${BENCH_ARGS:-} --json "$OUT/bench_fashion_device.json" > "$OUT/bench_fashion_device.txt" 2>&1
  tail -9 "$OUT/bench_fashion_device.txt"
  # the non-finite guard's cost (issue 20): the study preset's step, synthetic loader, guard on (default) and off
  for lim in 20 0; do
    timeout ${GUARD_TIMEOUT:-120} python3 -m eval.bench --config configs/fashion_study.yaml --data "$FM" --loader synthetic \
      --steps "${STEPS:-50}" --warmup 10 --repeats "${REPEATS:-3}" --nonfinite-limit $lim \
      --json "$OUT/bench_guard_$lim.json" > "$OUT/bench_guard_$lim.txt" 2>&1
    echo "--nonfinite-limit $lim:"; tail -3 "$OUT/bench_guard_$lim.txt"
  done
  # seconds per 60k-image epoch in training (study preset, compiled augmentation): 60000 / the img/s printed
  timeout 200 python3 train.py --config configs/fashion_study.yaml --data "$FM" --epochs "${SMALL_EPOCHS:-3}" \
    --out /tmp/fm_epochs --no-progress 2>&1 | grep -E "^(epoch|done)" | tee "$OUT/fashion_epochs.txt"
  [ "${CFGS-x}" = "" ] && [ "${SWEEP:-0}" = 0 ] && exit 0   # the small-data part alone: no JPEGs needed
fi
[ -d /tmp/inet ] || python3 scripts/make_jpegs.py /tmp/inet --n "$N" --classes 100 | tee "$OUT/jpegs.txt"
[ -f /tmp/inet.beton ] || python3 -m loaders.prepare --dataset imagefolder --data /tmp/inet --out /tmp/inet.beton \
  --max-resolution 256 --write-mode jpg --jpeg-quality 90 --workers 16 --no-progress 2>&1 | tail -2 | tee "$OUT/prepare.txt"
if [ "${SWEEP:-0}" = 1 ]; then
  timeout ${SWEEP_TIMEOUT:-420} python3 scripts/sweep_dali.py --data /tmp/inet --res 224 --batch-size 256 --threads 16 \
    --json "$OUT/sweep_dali.json" 2>&1 | grep -v -i warn | tee "$OUT/sweep_dali.txt"
  cp "$OUT/sweep_dali.json" /tmp/sweep_dali.json 2>/dev/null
fi
if [ "${BEST:-0}" = 1 ] && [ -f /tmp/sweep_dali.json ]; then
  BENCH_ARGS="${BENCH_ARGS:-} $(python3 scripts/sweep_dali.py --best /tmp/sweep_dali.json)"
  echo "eval.bench flags: $BENCH_ARGS" | tee "$OUT/best_flags.txt"
fi
for cfg in ${CFGS-resnet50:224 resnet18:128}; do
  set -- ${cfg/:/ }
  timeout 280 python3 -m eval.bench --loader "${LOADERS:-dali,ffcv,torch,tvpil}" --dataset imagefolder --data /tmp/inet \
    --beton /tmp/inet.beton --arch "$1" --res "$2" --batch-size 256 --workers 16 --steps "${STEPS:-30}" --warmup 5 \
    --repeats "${REPEATS:-2}" --budget-s "${BUDGET:-15}" \
    ${BENCH_ARGS:-} --json "$OUT/bench_$1_$2.json" > "$OUT/bench_$1_$2.txt" 2>&1
  tail -9 "$OUT/bench_$1_$2.txt"
done
